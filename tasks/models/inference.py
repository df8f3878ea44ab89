"""Batched, length-sorted inference and latency measurement for any of the model variants."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tasks.models.blend import Blend
from tasks.models.families import accepted_inputs, model_features


@dataclass
class Predictions:
    label_ids: np.ndarray
    probabilities: np.ndarray
    seconds: float


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar length, so dynamic padding wastes little."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


@torch.inference_mode()
def predict(model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int,
            batch_size: int = 64, blend: Blend | None = None) -> Predictions:
    """Class probabilities for `texts`, batched by length; returned in the input order.

    Only the tokenizer outputs the model's forward accepts are passed (DistilBERT and ModernBERT take no
    token_type_ids, an ONNX session only its own inputs). With a `blend`, the served mix of the model's
    probabilities and the lexical baseline's (tasks/models/blend.py)."""
    model.eval()
    started = time.perf_counter()
    encoded = model_features(tokenizer(list(texts), truncation=True, max_length=max_length), accepted_inputs(model))
    lengths = [len(ids) for ids in encoded["input_ids"]]
    num_labels = model.config.num_labels
    probabilities = np.zeros((len(texts), num_labels), dtype=np.float32)
    for batch in length_sorted_batches(lengths, batch_size):
        features = tokenizer.pad({key: [encoded[key][i] for i in batch] for key in encoded}, return_tensors="pt")
        logits = model(**features).logits.float()
        probabilities[batch] = torch.softmax(logits, dim=-1).numpy()
    if blend is not None:
        probabilities = blend.mix(texts, probabilities)
    return Predictions(probabilities.argmax(axis=1), probabilities, time.perf_counter() - started)


@torch.inference_mode()
def measure_latency(model: torch.nn.Module, tokenizer, texts: Sequence[str], *, max_length: int,
                    repeats: int = 3) -> dict[str, float]:
    """CPU latency in ms: p50/p95 at batch 1 over `texts`, p50 at batch 32 (after one warm-up)."""
    model.eval()
    texts = list(texts) or ["empty"]
    accepted = accepted_inputs(model)

    def timed(batch: Sequence[str]) -> float:
        features = model_features(tokenizer(list(batch), truncation=True, max_length=max_length, padding=True,
                                            return_tensors="pt"), accepted)
        started = time.perf_counter()
        model(**features)
        return (time.perf_counter() - started) * 1000

    timed(texts[:1])
    single = [timed([text]) for _ in range(repeats) for text in texts]
    batch32 = [timed((texts * 32)[:32]) for _ in range(repeats)]
    return {"latency_ms_batch1_p50": float(np.percentile(single, 50)),
            "latency_ms_batch1_p95": float(np.percentile(single, 95)),
            "latency_ms_batch32_p50": float(np.percentile(batch32, 50))}


# ------------------------------------------------------------------------------ compressed variants

def interleaved_latency(models: dict[str, Any], tokenizer, texts: Sequence[str], *, max_length: int,
                        rounds: int = 3, repeats: int = 3) -> dict[str, dict[str, float]]:
    """Per model, the median over `rounds` of `measure_latency` blocks, blocks interleaved across models.

    Each model is timed in its own block (torch and onnxruntime both spin worker threads, so alternating
    single calls skews both); the block order rotates each round so drift is shared.
    """
    names = list(models)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for round_index in range(rounds):
        for offset in range(len(names)):
            name = names[(round_index + offset) % len(names)]
            samples[name].append(measure_latency(models[name], tokenizer, texts, max_length=max_length, repeats=repeats))
    return {name: {key: float(np.median([block[key] for block in blocks])) for key in blocks[0]}
            for name, blocks in samples.items()}


# ------------------------------------------------------------------------------ distillation


