"""Augment the train split: EDA random swap / random deletion of words, for minority classes only.

Only clean's `train` rows are used (validation and test are never augmented). Each class is topped up
toward `augment.balance_to_fraction_of_largest` x the largest class, with at most
`augment.augmentations_per_row` augmented rows per real row, and never more than
`augment.max_augmented_fraction` x the real rows in total (shared in proportion to each class's
deficit). Every augmented row is `<id>#aug<k>` with `augmented_from` = the original id, and depends only
on (seed, id, k), so reruns are identical. Results equal to their original or to any text already in
the train set, or shorter than `validate.min_text_chars`, are skipped and counted.

Augmenters are pluggable (`Augmenter`): only random swap and random deletion exist today; WordNet
synonyms or model paraphrase would be further implementations passed to `augment_rows`.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa

from tasks.clean import DATASET_SCHEMA
from tasks.config import AugmentConfig, PipelineConfig
from tasks.contract import Manifest, StepContext, cli, execute
from tasks.data import content_hash, read_rows, write_parquet
from tasks.store import ArtifactStore
from tasks.tracking import log_dataset, log_manifest, step_run

STEP = "augment"
TRAIN_SCHEMA = DATASET_SCHEMA.append(pa.field("augmented_from", pa.string()))
# Float products like 0.29 * 100 = 28.999... must not lose a row to floor().
_EPSILON = 1e-9


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


def default_augmenters(config: AugmentConfig) -> list[Augmenter]:
    augmenters: list[Augmenter] = []
    if config.swap_probability > 0:
        augmenters.append(RandomSwap(config.swap_probability))
    if config.delete_probability > 0:
        augmenters.append(RandomDeletion(config.delete_probability))
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
                # Seeded by (seed, id, k) alone, so a row's variants do not depend on the rest of the batch.
                rng = random.Random(f"{config.seed}:{row['id']}:{k}")
                augmenter = augmenters[rng.randrange(len(augmenters))]
                text = augmenter.augment(row["text"], rng)
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


def metric_key(label: str) -> str:
    """MLflow metric names allow only alphanumerics and `_-. :/`."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", label)


def run(config: PipelineConfig, inputs: Mapping[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None) -> Manifest:
    def body(ctx: StepContext) -> None:
        train_rows = [row for row in read_rows(ctx.input_path("clean", "dataset")) if row["split"] == "train"]
        result = augment_rows(train_rows, config.labels, config.augment, default_augmenters(config.augment),
                              min_text_chars=config.validate_.min_text_chars)

        write_parquet(result.rows, ctx.out_dir / "train.parquet", schema=TRAIN_SCHEMA)
        rows_augmented = len(result.rows) - len(train_rows)
        report = {"classes": result.classes, "by_augmenter": result.by_augmenter, "skipped": result.skipped,
                  "rows_real": len(train_rows), "rows_augmented": rows_augmented}
        (ctx.out_dir / "augment_report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
        ctx.add_output("train", "train.parquet", "dataset", rows=len(result.rows), rows_augmented=rows_augmented)
        ctx.add_output("augment_report", "augment_report.json", "report")
        ctx.metrics.update({
            "rows_real": len(train_rows),
            "rows_augmented": rows_augmented,
            "rows_skipped": result.skipped,
            "classes_augmented": sum(counts["augmented"] > 0 for counts in result.classes.values()),
            "classes_balanced": sum(counts["final"] >= counts["target"] for counts in result.classes.values()),
        })
        for label, counts in result.classes.items():
            for name in ("real", "augmented", "final"):
                ctx.metrics[f"rows_{name}.{metric_key(label)}"] = counts[name]

    manifest = execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                       config_sections=(STEP, "validate"))
    if not manifest.reused:
        import mlflow

        with step_run(config, run_id, STEP, logical_date):
            log_manifest(manifest)
            mlflow.log_artifact(str(store.local_path(manifest.output("augment_report").uri)))
            train = manifest.output("train")
            log_dataset(pd.read_parquet(store.local_path(train.uri)), train, name=f"{config.name}.train", context=STEP)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
