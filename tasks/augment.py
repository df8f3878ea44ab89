"""Augment the train split with EDA word operations (and optionally a model), for minority classes only.

Only clean's `train` rows are used (validation and test are never augmented). Each class is topped up
toward `augment.balance_to_fraction_of_largest` x the largest class, with at most
`augment.augmentations_per_row` augmented rows per real row, and never more than
`augment.max_augmented_fraction` x the real rows in total (shared in proportion to each class's
deficit). Every augmented row is `<id>#aug<k>` with `augmented_from` = the original id, and depends only
on (seed, id, k), so reruns are identical. Results equal to their original or to any text already in
the train set, or shorter than `validate.min_text_chars`, are skipped and counted.

Augmenters (`Augmenter`), one picked per augmented row by the row's seeded generator:
- random swap and random deletion of words (no lexicon);
- synonym replacement and random insertion of a synonym, from the lexicon `augment.lexicon` chooses
  (`wordnet`: the WordNet 3.0 files at `augment.wordnet_path`; a missing path fails the step, it never
  falls back to fewer operations silently);
- one model-based augmenter (`augment.model_based: {name: ..., options}`), looked up by name in
  `MODEL_AUGMENTERS` (`register_model_augmenter`). `back_translation` is registered: it needs two local
  Hugging Face seq2seq model directories (there is no hub offline). A name that is not registered, or
  whose model is not there, fails the step naming what is missing.
The report and manifest say which lexicon and which model-based augmenter were used ("not configured").
MLflow gets clean's dataset (context `input`) and the train set (context `output`) as dataset inputs.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import mlflow
import pandas as pd
import pyarrow as pa

from tasks.config import AugmentConfig, ModelAugmenterConfig, PipelineConfig
from tasks.contract import StepContext, cli, execute
from tasks.label_set import run_labels
from tasks.lexicon import Lexicon, WordNet
from tasks.manifest import Manifest, StepError, StepFacts
from tasks.records import DATASET_SCHEMA, content_hash, read_rows, write_parquet
from tasks.store import ArtifactStore
from tasks.tracking import log_dataset

STEP = "augment"
TRAIN_SCHEMA = DATASET_SCHEMA.append(pa.field("augmented_from", pa.string()))
# Float products like 0.29 * 100 = 28.999... must not lose a row to floor().
_EPSILON = 1e-9
NOT_CONFIGURED = "model-based augmentation: not configured"
# A word with surrounding punctuation: "(library)," -> "(", "library", "),".
WORD = re.compile(r"^([^A-Za-z]*)([A-Za-z]+)([^A-Za-z]*)$")


class Augmenter(Protocol):
    """Turns a text into a variant; None when it cannot (e.g. too few words)."""

    @property
    def name(self) -> str: ...

    def augment(self, text: str, rng: random.Random) -> str | None: ...


@dataclass(frozen=True)
class RandomSwap:
    """EDA random swap: swap two random words, round(probability x words) times (at least once)."""

    probability: float
    name: str = field(default="random_swap", init=False)

    def augment(self, text: str, rng: random.Random) -> str | None:
        words = text.split()
        if len(words) < 2:
            return None
        for _ in range(max(1, round(self.probability * len(words)))):
            first, second = rng.sample(range(len(words)), 2)
            words[first], words[second] = words[second], words[first]
        return " ".join(words)


@dataclass(frozen=True)
class RandomDeletion:
    """EDA random deletion: drop each word with `probability`, always keeping at least one."""

    probability: float
    name: str = field(default="random_deletion", init=False)

    def augment(self, text: str, rng: random.Random) -> str | None:
        words = text.split()
        if len(words) < 2:
            return None
        kept = [word for word in words if rng.random() >= self.probability]
        return " ".join(kept) if kept else rng.choice(words)


def _replaceable(words: Sequence[str], lexicon: Lexicon) -> list[tuple[int, tuple[str, ...]]]:
    """(position, synonyms) of the words the lexicon has synonyms for (punctuation around them is kept)."""
    found = []
    for position, word in enumerate(words):
        match = WORD.match(word)
        if match and (synonyms := lexicon.synonyms(match.group(2))):
            found.append((position, synonyms))
    return found


@dataclass(frozen=True)
class SynonymReplacement:
    """EDA synonym replacement: round(probability x words) (at least one) replaceable words get a synonym."""

    lexicon: Lexicon
    probability: float
    name: str = field(default="synonym_replacement", init=False)

    def augment(self, text: str, rng: random.Random) -> str | None:
        words = text.split()
        candidates = _replaceable(words, self.lexicon)
        if not candidates:
            return None
        count = min(len(candidates), max(1, round(self.probability * len(words))))
        for position, synonyms in rng.sample(candidates, count):
            prefix, _, suffix = WORD.match(words[position]).groups()  # type: ignore[union-attr]
            words[position] = prefix + rng.choice(synonyms) + suffix
        return " ".join(words)


@dataclass(frozen=True)
class RandomInsertion:
    """EDA random insertion: round(probability x words) times (at least once), insert a synonym of a
    random replaceable word at a random position."""

    lexicon: Lexicon
    probability: float
    name: str = field(default="random_insertion", init=False)

    def augment(self, text: str, rng: random.Random) -> str | None:
        words = text.split()
        candidates = _replaceable(words, self.lexicon)
        if not candidates:
            return None
        for _ in range(max(1, round(self.probability * len(words)))):
            _, synonyms = rng.choice(candidates)
            words.insert(rng.randint(0, len(words)), rng.choice(synonyms))
        return " ".join(words)


def load_lexicon(config: AugmentConfig) -> Lexicon | None:
    """The configured lexicon; raises (naming the path) when it is configured but not there."""
    if config.lexicon == "wordnet":
        return WordNet(config.wordnet_path, max_senses=config.wordnet_max_senses)
    return None


# ------------------------------------------------------------------------- model-based augmenters

ModelAugmenterFactory = Callable[[ModelAugmenterConfig], Augmenter]
MODEL_AUGMENTERS: dict[str, ModelAugmenterFactory] = {}


def register_model_augmenter(name: str) -> Callable[[ModelAugmenterFactory], ModelAugmenterFactory]:
    """Make a model-based augmenter available as `augment.model_based.name`."""
    def register(factory: ModelAugmenterFactory) -> ModelAugmenterFactory:
        MODEL_AUGMENTERS[name] = factory
        return factory

    return register


def model_augmenter(config: ModelAugmenterConfig | None) -> Augmenter | None:
    if config is None:
        return None
    factory = MODEL_AUGMENTERS.get(config.name)
    if factory is None:
        raise StepError(f"augment.model_based.name={config.name!r} is not an available model-based augmenter; "
                        f"registered: {sorted(MODEL_AUGMENTERS)}")
    return factory(config)


def _option(config: ModelAugmenterConfig, key: str, default: Any = None) -> Any:
    value = (config.model_extra or {}).get(key, default)
    if value is None:
        raise StepError(f"augment.model_based ({config.name}) needs option {key!r}")
    return value


class BackTranslation:
    """Translate into a pivot language and back with two local seq2seq models (e.g. opus-mt en->de, de->en),
    sampling so that the k-th variant of a row differs from the others; the row's generator seeds torch."""

    name = "back_translation"

    def __init__(self, forward_model: str, backward_model: str, max_length: int = 128, top_p: float = 0.9) -> None:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        for setting, directory in (("forward_model", forward_model), ("backward_model", backward_model)):
            if not (Path(directory) / "config.json").is_file():
                raise StepError(f"augment.model_based (back_translation): {setting} {directory} is not a local "
                                "Hugging Face model directory (no config.json); models cannot be downloaded offline")
        self.models = [(AutoTokenizer.from_pretrained(directory, local_files_only=True),
                        AutoModelForSeq2SeqLM.from_pretrained(directory, local_files_only=True).eval())
                       for directory in (forward_model, backward_model)]
        self.max_length = max_length
        self.top_p = top_p

    def augment(self, text: str, rng: random.Random) -> str | None:
        import torch

        torch.manual_seed(rng.randrange(2**31))
        for tokenizer, model in self.models:
            encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=self.max_length)
            with torch.inference_mode():
                generated = model.generate(**encoded, do_sample=True, top_p=self.top_p, max_length=self.max_length)
            text = str(tokenizer.decode(generated[0], skip_special_tokens=True)).strip()
            if not text:
                return None
        return text


@register_model_augmenter("back_translation")
def _back_translation(config: ModelAugmenterConfig) -> Augmenter:
    return BackTranslation(_option(config, "forward_model"), _option(config, "backward_model"),
                           max_length=int(_option(config, "max_length", 128)),
                           top_p=float(_option(config, "top_p", 0.9)))


def default_augmenters(config: AugmentConfig, lexicon: Lexicon | None = None,
                       model: Augmenter | None = None) -> list[Augmenter]:
    augmenters: list[Augmenter] = []
    if config.swap_probability > 0:
        augmenters.append(RandomSwap(config.swap_probability))
    if config.delete_probability > 0:
        augmenters.append(RandomDeletion(config.delete_probability))
    if lexicon is not None and config.synonym_probability > 0:
        augmenters.append(SynonymReplacement(lexicon, config.synonym_probability))
    if lexicon is not None and config.insert_probability > 0:
        augmenters.append(RandomInsertion(lexicon, config.insert_probability))
    if model is not None:
        augmenters.append(model)
    return augmenters


def class_targets(real_counts: Mapping[str, int], config: AugmentConfig) -> dict[str, int]:
    """Each class's target size: a share of the largest class (never below its real size)."""
    largest = max(real_counts.values(), default=0)
    target = math.floor(config.balance_to_fraction_of_largest * largest + _EPSILON)
    return {label: max(count, target) for label, count in real_counts.items()}


def augmentation_quotas(real_counts: Mapping[str, int], targets: Mapping[str, int],
                        config: AugmentConfig) -> dict[str, int]:
    """Augmented rows per class: the deficit, bounded per row and, in total, by the cap."""
    wanted = {label: min(targets[label] - count, config.augmentations_per_row * count)
              for label, count in real_counts.items()}
    cap = math.floor(config.max_augmented_fraction * sum(real_counts.values()) + _EPSILON)
    total = sum(wanted.values())
    if total <= cap:
        return wanted
    # Share the cap in proportion to the deficits (largest remainder, ties by label: deterministic).
    quotas = {label: amount * cap // total for label, amount in wanted.items()}
    by_remainder = sorted(wanted, key=lambda label: (-(wanted[label] * cap % total), label))
    for label in by_remainder[: cap - sum(quotas.values())]:
        quotas[label] += 1
    return quotas


@dataclass
class AugmentResult:
    rows: list[dict[str, Any]]  # real train rows, then augmented rows
    classes: dict[str, dict[str, int]]  # label -> real, target, augmented, final
    by_augmenter: dict[str, int] = field(default_factory=dict)
    skipped: int = 0  # candidates that were None, too short, unchanged, or already in the train set


def variant(text: str, record_id: str, k: int, seed: int,
            augmenters: Sequence[Augmenter]) -> tuple[Augmenter, str | None]:
    """The k-th variant of a row: the augmenter and its text are seeded by (seed, id, k) alone, so a row's
    variants do not depend on the rest of the batch."""
    rng = random.Random(f"{seed}:{record_id}:{k}")
    augmenter = augmenters[rng.randrange(len(augmenters))]
    return augmenter, augmenter.augment(text, rng)


def augment_rows(train_rows: Sequence[Mapping[str, Any]], labels: Sequence[str], config: AugmentConfig,
                 augmenters: Sequence[Augmenter], min_text_chars: int = 1) -> AugmentResult:
    real_counts = {label: sum(row["label"] == label for row in train_rows) for label in labels}
    targets = class_targets(real_counts, config)
    quotas = augmentation_quotas(real_counts, targets, config) if augmenters else dict.fromkeys(labels, 0)
    result = AugmentResult(rows=[{**row, "augmented_from": None} for row in train_rows], classes={})
    known_texts = {row["text"] for row in train_rows}

    for label in labels:
        members = sorted((row for row in train_rows if row["label"] == label), key=lambda row: row["id"])
        # Which rows get augmented when the quota is smaller than the class: a seeded, id-ordered shuffle.
        random.Random(f"{config.seed}:{label}").shuffle(members)
        augmented = 0
        for k in range(1, config.augmentations_per_row + 1):
            for row in members:
                if augmented >= quotas[label]:
                    break
                augmenter, text = variant(row["text"], row["id"], k, config.seed, augmenters)
                if text is None or len(text) < min_text_chars or text in known_texts:
                    result.skipped += 1
                    continue
                known_texts.add(text)
                result.rows.append({**row, "id": f"{row['id']}#aug{k}", "text": text, "augmented_from": row["id"],
                                    "content_hash": content_hash(text), "normalized_hash": content_hash(text)})
                result.by_augmenter[augmenter.name] = result.by_augmenter.get(augmenter.name, 0) + 1
                augmented += 1
        result.classes[label] = {"real": real_counts[label], "target": targets[label], "augmented": augmented,
                                 "final": real_counts[label] + augmented}
    return result


class AugmentFacts(StepFacts):
    """The augmenters that ran, in order; the lexicon (its description, or "none") and the model-based augmenter
    (its settings, or why it did not run)."""

    augmenters: list[str]
    lexicon: dict[str, Any] | str
    model_based: dict[str, Any] | str


def metric_key(label: str) -> str:
    """MLflow metric names allow only alphanumerics and `_-. :/`."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", label)


def run(config: PipelineConfig, inputs: Mapping[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None) -> Manifest:
    # Loaded before `execute`, so a configured but missing lexicon or model fails even on a rerun.
    lexicon = load_lexicon(config.augment)
    lexicon_used = lexicon.describe() if lexicon is not None else "none"
    model_used = config.augment.model_based.model_dump() if config.augment.model_based else NOT_CONFIGURED

    def body(context: StepContext) -> None:
        train_rows = [row for row in read_rows(context.input_path("clean", "dataset")) if row["split"] == "train"]
        augmenters = default_augmenters(config.augment, lexicon, model_augmenter(config.augment.model_based))
        # New labels (validate.new_labels: extend) are balanced like the configured ones.
        labels = run_labels(config, context.input("clean"), store)
        result = augment_rows(train_rows, labels, config.augment, augmenters,
                              min_text_chars=config.validate_.min_text_chars)

        write_parquet(result.rows, context.out_dir / "train.parquet", schema=TRAIN_SCHEMA)
        rows_augmented = len(result.rows) - len(train_rows)
        report = {"classes": result.classes, "by_augmenter": result.by_augmenter, "skipped": result.skipped,
                  "rows_real": len(train_rows), "rows_augmented": rows_augmented,
                  "augmenters": [augmenter.name for augmenter in augmenters],
                  "lexicon": lexicon_used, "model_based": model_used}
        context.facts.update(AugmentFacts(augmenters=report["augmenters"], lexicon=lexicon_used,
                                          model_based=model_used).dump())
        (context.out_dir / "augment_report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
        context.add_output("train", "train.parquet", "dataset", rows=len(result.rows), rows_augmented=rows_augmented)
        context.add_output("augment_report", "augment_report.json", "report")
        context.metrics.update({
            "rows_real": len(train_rows),
            "rows_augmented": rows_augmented,
            "rows_skipped": result.skipped,
            "classes_augmented": sum(counts["augmented"] > 0 for counts in result.classes.values()),
            "classes_balanced": sum(counts["final"] >= counts["target"] for counts in result.classes.values()),
        })
        for label, counts in result.classes.items():
            for name in ("real", "augmented", "final"):
                context.metrics[f"rows_{name}.{metric_key(label)}"] = counts[name]

    def track(manifest: Manifest) -> None:
        mlflow.log_artifact(str(store.local_path(manifest.output("augment_report").uri)))
        mlflow.set_tags({"freshet.augment.lexicon": lexicon.name if lexicon is not None else "none",
                         "freshet.augment.model_based": config.augment.model_based.name
                         if config.augment.model_based else "not configured"})
        dataset, train = inputs["clean"].output("dataset"), manifest.output("train")
        log_dataset(pd.read_parquet(store.local_path(dataset.uri)), dataset, name=f"{config.name}.dataset",
                    context="input")
        log_dataset(pd.read_parquet(store.local_path(train.uri)), train, name=f"{config.name}.train",
                    context="output")

    return execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                   config_sections=(STEP, "validate"),
                   extra_fingerprint={"lexicon": lexicon.digest if isinstance(lexicon, WordNet) else None},
                   track=track)


def main(argv: Sequence[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
