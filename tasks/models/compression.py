"""Compression variants: dynamic int8, ONNX export and int8 quantisation, magnitude pruning, a distilled
student; and loading whichever variant the gate chose for serving."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from tasks.models.build import Classifier, load_classifier
from tasks.models.families import CANDIDATE_INPUTS, accepted_inputs, encoder_layers, family_of, model_features
from tasks.models.inference import length_sorted_batches
from tasks.training.runtime import threads_per_rank

# The most an exported file takes, in this order; each model's file takes those its forward accepts.
ONNX_INPUTS = CANDIDATE_INPUTS


class _LogitsOnly(torch.nn.Module):
    """Positional inputs (in `names` order) and a plain logits output, for the TorchScript exporter."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs))).logits


def export_onnx(model: Classifier, tokenizer, path: Path, *, opset: int = 17) -> Path:
    """fp32 ONNX with dynamic batch and sequence axes (TorchScript exporter: onnxscript is not installed).

    Its inputs are those the model's forward accepts; token_type_ids, where accepted but not produced by the
    tokenizer (RoBERTa's), are zeros, as the model itself would use.
    """
    import warnings

    model.eval()
    names = accepted_inputs(model)
    features = tokenizer(["an example text to trace", "short"], padding=True, return_tensors="pt")
    if "token_type_ids" in names and "token_type_ids" not in features:
        features["token_type_ids"] = torch.zeros_like(features["input_ids"])
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # dynamo=False is deprecated; tracer warnings about shapes are expected
        torch.onnx.export(_LogitsOnly(model, names).eval(), tuple(features[name] for name in names), str(path),
                          input_names=list(names), output_names=["logits"],
                          dynamic_axes={**axes, "logits": {0: "batch"}}, opset_version=opset, dynamo=False)
    model.eval()  # the exporter restores the wrapper's training flag, recursively
    return path


def quantize_onnx_int8(source: Path, target: Path) -> Path:
    """onnxruntime dynamic quantization: int8 weights (MatMul, Gather), activations quantized per call."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it warns through the root logger to run its pre-processing (optional)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return target


class OnnxClassifier:
    """An onnxruntime session that quacks like a HF classifier for `predict` and `measure_latency`."""

    def __init__(self, onnx_path: Path, config, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or threads_per_rank()
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self.session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_names = [item.name for item in self.session.get_inputs()]
        self.config = config

    def eval(self) -> OnnxClassifier:
        return self

    def __call__(self, **features):
        from types import SimpleNamespace

        if "token_type_ids" in self.input_names and "token_type_ids" not in features:
            features["token_type_ids"] = torch.zeros_like(torch.as_tensor(features["input_ids"]))
        feed = {name: np.asarray(features[name], dtype=np.int64) for name in self.input_names}
        return SimpleNamespace(logits=torch.from_numpy(self.session.run(["logits"], feed)[0]))


def prune_magnitude(model: Classifier, amount: float) -> tuple[Classifier, float]:
    """Global magnitude pruning of every Linear weight, made permanent; returns (model, sparsity)."""
    from torch.nn.utils import prune

    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    prune.global_unstructured([(module, "weight") for module in linears], pruning_method=prune.L1Unstructured,
                              amount=amount)
    for module in linears:
        prune.remove(module, "weight")
    zeros = sum(int((module.weight == 0).sum()) for module in linears)
    return model.eval(), zeros / sum(module.weight.numel() for module in linears)


SERVING_VARIANTS = ("fp32", "int8-dynamic", "onnx-fp32", "onnx-int8", "distilled", "distilled-onnx-int8")


def load_serving_model(model_dir: Path, variant: str | None = None, onnx_path: Path | None = None,
                       trust_remote_code: bool = False):
    """The model a serving variant runs, and its tokenizer: torch (fp32 / int8 recipe) or an ONNX file.

    For `distilled`, `model_dir` is the student's directory; ONNX variants take labels and tokenizer
    from `model_dir` (a student shares both with its teacher).
    """
    variant = variant or "fp32"
    if variant in ("fp32", "none", "int8-dynamic", "distilled"):
        return load_classifier(model_dir, "int8-dynamic" if variant == "int8-dynamic" else None,
                               trust_remote_code=trust_remote_code)
    if variant not in SERVING_VARIANTS:
        raise ValueError(f"unknown serving variant {variant!r}; known: {SERVING_VARIANTS}")
    if onnx_path is None:
        raise ValueError(f"serving variant {variant!r} needs an ONNX file")
    from transformers import AutoConfig

    remote = {"trust_remote_code": trust_remote_code}
    return (OnnxClassifier(Path(onnx_path), AutoConfig.from_pretrained(str(model_dir), **remote)),
            AutoTokenizer.from_pretrained(str(model_dir), **remote))


def build_student(teacher: Classifier, num_layers: int, hidden_size: int | None = None) -> Classifier:
    """A shallower copy of `teacher` to distil into.

    Same width: the embeddings, the classifier head and `num_layers` encoder layers spread evenly over
    the teacher's depth (top layer kept; 6 -> 3 keeps 2, 4, 6) are copied as the initialisation. Where the
    family keeps its layers (tasks/models/families.py: `encoder.layer`, DistilBERT `transformer.layer`);
    where the copy does not apply (ModernBERT) `LayerCopyNotApplicable` says why.
    A smaller `hidden_size` cannot reuse the teacher's weights: that student starts random, with the
    teacher's vocabulary and labels.
    """
    import copy

    config = teacher.config
    if hidden_size is not None and hidden_size != config.hidden_size:
        heads = max(1, min(config.num_attention_heads, hidden_size // 32))
        if hidden_size % heads:
            raise ValueError(f"distill hidden_size {hidden_size} is not a multiple of its {heads} attention heads")
        family = family_of(getattr(config, "model_type", None))
        renamed = getattr(config, "attribute_map", None) or {}  # DistilBERT: hidden_size is `dim`, ...
        settings = config.to_dict()
        for name, value in {"hidden_size": hidden_size, "num_attention_heads": heads, "num_hidden_layers": num_layers,
                            family.intermediate_key: 4 * hidden_size}.items():
            settings[renamed.get(name, name)] = value
        if settings.get("layer_types") is not None:
            settings["layer_types"] = None  # per-layer attention kinds (ModernBERT): rebuilt for the new depth
        if settings.get("embedding_size") == config.hidden_size:  # ELECTRA: embeddings as wide as the encoder
            settings["embedding_size"] = hidden_size
        student_config = type(config).from_dict(settings)
        torch.manual_seed(0)
        return type(teacher)(student_config).eval()
    layers, path = encoder_layers(teacher)
    depth = len(layers)
    if not 1 <= num_layers <= depth:
        raise ValueError(f"distill num_layers {num_layers} must be within 1..{depth} (the teacher's depth)")
    keep = sorted({round((index + 1) * depth / num_layers) - 1 for index in range(num_layers)})
    student = copy.deepcopy(teacher)
    parent_path, _, attribute = path.rpartition(".")
    parent = student.base_model.get_submodule(parent_path) if parent_path else student.base_model
    setattr(parent, attribute, torch.nn.ModuleList(getattr(parent, attribute)[index] for index in keep))
    student.config.num_hidden_layers = len(keep)  # DistilBERT: n_layers, through its attribute_map
    for position, layer in enumerate(getattr(parent, attribute)):  # attention caches index layers by position
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = position
    return student.eval()


@torch.inference_mode()
def teacher_logits(model: Classifier, tokenizer, texts: Sequence[str], *, max_length: int,
                   batch_size: int = 64) -> np.ndarray:
    """Raw logits of `model` for `texts` (input order), the soft targets of distillation."""
    model.eval()
    encoded = model_features(tokenizer(list(texts), truncation=True, max_length=max_length), accepted_inputs(model))
    lengths = [len(ids) for ids in encoded["input_ids"]]
    logits = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    for batch in length_sorted_batches(lengths, batch_size):
        features = tokenizer.pad({key: [encoded[key][i] for i in batch] for key in encoded}, return_tensors="pt")
        logits[batch] = model(**features).logits.float().numpy()
    return logits


def distill(student: Classifier, tokenizer, texts: Sequence[str], label_ids: Sequence[int],
            soft_logits: np.ndarray | None, *, max_length: int, epochs: int = 3, batch_size: int = 32,
            learning_rate: float = 1e-4, temperature: float = 2.0, alpha: float = 0.5, seed: int = 0,
            ) -> dict[str, float]:
    """Train `student` in place on alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels).

    `soft_logits` None (or alpha 0) is plain fine-tuning on the labels. Batches of similar length
    (dynamic padding), shuffled per epoch; AdamW with a linear decay. Returns the last epoch's mean loss.
    """
    from torch.nn import functional

    if soft_logits is None:
        alpha = 0.0
    if not 0.0 <= alpha <= 1.0 or temperature <= 0:
        raise ValueError(f"distill: alpha must be in [0, 1] and temperature > 0 (got alpha={alpha}, T={temperature})")
    if not texts:
        raise ValueError("distill: no training texts")
    torch.set_num_threads(threads_per_rank())
    generator = torch.Generator().manual_seed(seed)
    encoded = model_features(tokenizer(list(texts), truncation=True, max_length=max_length), accepted_inputs(student))
    lengths = [len(ids) for ids in encoded["input_ids"]]
    batches = length_sorted_batches(lengths, batch_size)
    targets = torch.as_tensor(list(label_ids), dtype=torch.long)
    soft = torch.as_tensor(soft_logits) if soft_logits is not None else None
    optimizer = torch.optim.AdamW(student.parameters(), lr=learning_rate, weight_decay=0.01)
    total = max(1, epochs * len(batches))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total))
    student.train()
    epoch_loss = float("nan")
    for _ in range(epochs):
        losses = []
        for position in torch.randperm(len(batches), generator=generator).tolist():
            batch = batches[position]
            features = tokenizer.pad({key: [encoded[key][i] for i in batch] for key in encoded}, return_tensors="pt")
            logits = student(**features).logits
            loss = functional.cross_entropy(logits, targets[batch]) * (1 - alpha)
            if alpha > 0 and soft is not None:
                # KL on temperature-softened distributions, scaled by T^2 so its gradients keep their size.
                loss = loss + alpha * temperature ** 2 * functional.kl_div(
                    functional.log_softmax(logits / temperature, dim=-1),
                    functional.log_softmax(soft[batch] / temperature, dim=-1), log_target=True, reduction="batchmean")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        epoch_loss = float(np.mean(losses))
    student.eval()
    return {"loss": epoch_loss, "steps": float(epochs * len(batches)), "rows": float(len(texts))}
