"""Clean a validated batch: normalise texts, de-duplicate within the batch and against history, assign splits.

Normalisation, in order: strip HTML tags and decode entities (`clean.strip_markup`), Unicode
normalisation (`clean.unicode_form`), removal of control and invisible format characters, whitespace
collapse, optional lowercasing, then optional PII scrubbing (`clean.scrub_pii`: e-mail addresses,
phone numbers, IPv4/IPv6 addresses become `<EMAIL>`, `<PHONE>`, `<IPV4>`, `<IPV6>`). Rows that end up
shorter than `validate.min_text_chars` are quarantined (`clean.too_short`). Rows sharing a normalised
text keep the first occurrence; if they disagree on the label all of them are quarantined
(`clean.label_conflict`). Texts already in an earlier accepted snapshot are dropped and counted (known
data); a known id with a new text is kept as an update, and so is a known id whose text is unchanged but whose
label changed (an annotation edited in the labelling tool: `relabels_of_history`). The later version of an id
supersedes the earlier one wherever snapshots are read (`tasks.records.latest_versions`).

Near-duplicates (`clean.near_duplicate_threshold`): MinHash LSH over shingles of the casefolded text
finds candidates, and the exact Jaccard similarity of the shingle sets decides, so the threshold is
exact. Within the batch, near-duplicate clusters keep their first row, or are quarantined whole
(`clean.near_duplicate_label_conflict`) when they disagree on the label. A row near-duplicating an
accepted history row (of another id) is dropped, or quarantined if the labels disagree.

Leakage (`clean.leakage_threshold`): a train row similar to any validation or test row, of this batch
or of the history, is removed (`leakage_removed`); evaluation rows are never removed for leakage.
Every count is in `clean_report.json`. The snapshot is then recorded in the history. MLflow gets the
valid rows (context `input`) and the cleaned dataset (context `output`) as dataset inputs with digests.

What is done to one text (normalisation, scrubbing, the near-duplicate sketches) is `tasks.text`, shared with the
labelling queue and the prediction log.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlflow
import pandas as pd
import pyarrow.parquet as pq

from tasks.config import CleanConfig, PipelineConfig
from tasks.contract import StepContext, cli, execute
from tasks.inbox import accept_batches
from tasks.manifest import Manifest, StepError
from tasks.records import (
    DATASET_SCHEMA,
    QUARANTINE_SCHEMA,
    SPLITS,
    CleanFacts,
    Snapshot,
    content_hash,
    read_rows,
    split_of,
    write_parquet,
)
from tasks.snapshots import prior_snapshots, record_snapshot
from tasks.store import ArtifactStore
from tasks.text import NORMALISATION_RULES, PII_RULES, SimilarityIndex, Sketches, prepare
from tasks.tracking import log_dataset
from tasks.validate import ValidateFacts

STEP = "clean"
REMOVAL_RULES = ("duplicates_in_batch", "duplicates_of_history", "label_conflicts", "too_short",
                 "near_duplicates_in_batch", "near_duplicates_of_history", "near_duplicate_label_conflicts",
                 "leakage_removed")
QUARANTINE_RULES = ("label_conflicts", "too_short", "near_duplicate_label_conflicts")
EVALUATION_SPLITS = ("validation", "test")
EXAMPLE_IDS = 5


def quarantine_record(row: Mapping[str, Any], check: str, field: str, value: Any, reason: str) -> dict[str, Any]:
    return {
        "id": row["id"], "source": row.get("source"), "step": STEP, "check": check, "field": field,
        "value": None if value is None else str(value), "reason": reason,
        "record_json": json.dumps(dict(row), ensure_ascii=False, default=str),
    }


@dataclass(frozen=True)
class History:
    """What earlier accepted snapshots hold: the labels of each normalised text (by hash), the ids, each id's
    latest (text hash, label), and per row (for near-duplicates and leakage) its id, normalised text, label and
    split."""

    labels_of_text: Mapping[str, set[str]]
    ids: set[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    latest: Mapping[str, tuple[str, str]] = field(default_factory=dict)


def load_history(store: ArtifactStore, snapshots: Iterable[Mapping[str, Any]], config: CleanConfig) -> History:
    labels_of_text: dict[str, set[str]] = {}
    ids: set[str] = set()
    rows: list[dict[str, Any]] = []
    latest: dict[str, tuple[str, str]] = {}
    for snapshot in snapshots:
        path = store.local_path(snapshot["uri"])
        try:
            columns = [name for name in ("id", "text", "label", "split") if name in pq.read_schema(path).names]
            table = pq.read_table(path, columns=columns)
        except FileNotFoundError as error:
            raise StepError(f"{STEP}: snapshot of run {snapshot['run_id']!r} is listed in the history "
                            f"but missing at {snapshot['uri']}") from error
        for row in table.to_pylist():
            # Re-normalised with today's rules, so a changed clean config still compares like with like.
            text = prepare(row["text"], config)[0].text
            labels_of_text.setdefault(content_hash(text), set()).add(row["label"])
            ids.add(row["id"])
            latest[row["id"]] = (content_hash(text), row["label"])  # snapshots come oldest first
            rows.append({"id": row["id"], "text": text, "label": row["label"], "split": row.get("split")})
    return History(labels_of_text, ids, rows, latest)


@dataclass
class CleanResult:
    dataset: list[dict[str, Any]]
    quarantine: list[dict[str, Any]]
    counts: dict[str, int]
    examples: dict[str, list[str]]  # rule -> a few affected ids

    def count(self, rule: str, record_id: str) -> None:
        self.counts[rule] = self.counts.get(rule, 0) + 1
        if len(self.examples.setdefault(rule, [])) < EXAMPLE_IDS:
            self.examples[rule].append(record_id)


def clean_rows(rows: Sequence[Mapping[str, Any]], config: PipelineConfig, history: History) -> CleanResult:
    counts = dict.fromkeys((*NORMALISATION_RULES, *REMOVAL_RULES, *PII_RULES, "history_label_disagreements",
                            "updates_of_history", "relabels_of_history"), 0)
    result = CleanResult(dataset=[], quarantine=[], counts=counts, examples={})
    groups = normalised_groups(rows, config, result)
    survivors = first_of_each_text(groups, history, result)

    threshold = config.clean.near_duplicate_threshold
    leakage_threshold = config.clean.leakage_threshold
    needs_sketches = threshold is not None or leakage_threshold is not None
    sketches = Sketches.of([text for _, text in survivors], config.clean) if needs_sketches else None
    history_sketches = (Sketches.of([row["text"] for row in history.rows], config.clean)
                        if needs_sketches and history.rows else Sketches([], []))
    kept = list(range(len(survivors)))
    if threshold is not None and sketches is not None:
        kept = remove_near_duplicates(survivors, sketches, history, history_sketches, threshold, config, result)

    dataset: list[tuple[int, dict[str, Any]]] = []
    for position in kept:
        first, text = survivors[position]
        # A known id whose text is new (a known text was dropped above): an update, kept.
        if first["id"] in history.ids:
            result.count("updates_of_history", first["id"])
        dataset.append((position, {**first, "text": text, "normalized_hash": content_hash(text),
                                   "split": split_of(first["id"], config.split)}))
    if leakage_threshold is not None and sketches is not None:
        dataset = remove_leakage(dataset, sketches, history, history_sketches, leakage_threshold, config, result)
    result.dataset = [row for _, row in dataset]
    return result


def normalised_groups(rows: Sequence[Mapping[str, Any]], config: PipelineConfig,
                      result: CleanResult) -> dict[str, list[Mapping[str, Any]]]:
    """Normalise, and group the original rows by their normalised text (insertion order = batch order); a text
    too short once normalised is quarantined."""
    min_chars = config.validate_.min_text_chars
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        normalised, pii = prepare(row["text"], config.clean)
        for rule in sorted(normalised.changed_by):
            result.count(rule, row["id"])
        for rule, found in pii.items():
            if found:
                result.count(rule, row["id"])
                result.counts[rule] += found - 1  # PII counts occurrences, not rows
        if len(normalised.text) < min_chars:
            result.count("too_short", row["id"])
            result.quarantine.append(quarantine_record(
                row, "clean.too_short", "text", normalised.text,
                f"normalised text has {len(normalised.text)} characters, "
                f"fewer than validate.min_text_chars={min_chars}"))
            continue
        groups.setdefault(normalised.text, []).append(row)
    return groups


def first_of_each_text(groups: Mapping[str, list[Mapping[str, Any]]], history: History,
                       result: CleanResult) -> list[tuple[Mapping[str, Any], str]]:
    """(first row, normalised text) of each text, in batch order: a text with conflicting labels is quarantined,
    its exact duplicates in the batch and a text already in the history are dropped, unless it comes again under
    its own id with another label (a relabel: kept, it supersedes the earlier version)."""
    survivors: list[tuple[Mapping[str, Any], str]] = []
    for text, group in groups.items():
        first, *duplicates = group
        labels = sorted({member["label"] for member in group})
        if len(labels) > 1:
            ids = [member["id"] for member in group]
            for member in group:
                result.count("label_conflicts", member["id"])
                result.quarantine.append(quarantine_record(
                    member, "clean.label_conflict", "label", member["label"],
                    f"normalised text shared by ids {ids} with labels {labels}"))
            continue
        for duplicate in duplicates:
            result.count("duplicates_in_batch", duplicate["id"])
        text_hash = content_hash(text)
        known = history.latest.get(first["id"])
        if known is not None and known[0] == text_hash and known[1] != first["label"]:
            result.count("relabels_of_history", first["id"])
        elif text_hash in history.labels_of_text:
            result.count("duplicates_of_history", first["id"])
            if first["label"] not in history.labels_of_text[text_hash]:
                result.count("history_label_disagreements", first["id"])
            continue
        survivors.append((first, text))
    return survivors


def remove_near_duplicates(survivors: Sequence[tuple[Mapping[str, Any], str]], sketches: Sketches,
                           history: History, history_sketches: Sketches, threshold: float,
                           config: PipelineConfig, result: CleanResult) -> list[int]:
    """Positions in `survivors` that stay: one per near-duplicate cluster, none near a history row."""
    index = SimilarityIndex(threshold, config.clean)
    for position in range(len(survivors)):
        index.add(position, sketches.shingles[position], sketches.minhashes[position])
    # Union-find over near-duplicate pairs; the root is the earliest row in batch order.
    parent = list(range(len(survivors)))

    def root(position: int) -> int:
        while parent[position] != position:
            parent[position] = parent[parent[position]]
            position = parent[position]
        return position

    for position in range(len(survivors)):
        for other in index.matches(sketches.shingles[position], sketches.minhashes[position]):
            low, high = sorted((root(position), root(other)))
            parent[high] = low
    clusters: dict[int, list[int]] = {}
    for position in range(len(survivors)):
        clusters.setdefault(root(position), []).append(position)

    history_index = SimilarityIndex(threshold, config.clean)
    for number in range(len(history.rows)):
        history_index.add(number, history_sketches.shingles[number], history_sketches.minhashes[number])

    kept: list[int] = []
    for members in clusters.values():
        labels = sorted({survivors[position][0]["label"] for position in members})
        if len(labels) > 1:
            ids = [survivors[position][0]["id"] for position in members]
            for position in members:
                member = survivors[position][0]
                result.count("near_duplicate_label_conflicts", member["id"])
                result.quarantine.append(quarantine_record(
                    member, "clean.near_duplicate_label_conflict", "label", member["label"],
                    f"near-duplicate texts (Jaccard >= {threshold}) of ids {ids} have labels {labels}"))
            continue
        first, *others = members
        for position in others:
            result.count("near_duplicates_in_batch", survivors[position][0]["id"])
        row = survivors[first][0]
        # The same id in history is an update of that row, not a near-duplicate of it.
        similar = [history.rows[number] for number in history_index.matches(
            sketches.shingles[first], sketches.minhashes[first]) if history.rows[number]["id"] != row["id"]]
        if not similar:
            kept.append(first)
        elif row["label"] in {item["label"] for item in similar}:
            result.count("near_duplicates_of_history", row["id"])
        else:
            result.count("near_duplicate_label_conflicts", row["id"])
            result.quarantine.append(quarantine_record(
                row, "clean.near_duplicate_label_conflict", "label", row["label"],
                f"near-duplicate (Jaccard >= {threshold}) of accepted ids "
                f"{[item['id'] for item in similar[:EXAMPLE_IDS]]} with labels "
                f"{sorted({item['label'] for item in similar})}"))
    return sorted(kept)


def remove_leakage(dataset: list[tuple[int, dict[str, Any]]], sketches: Sketches, history: History,
                   history_sketches: Sketches, threshold: float, config: PipelineConfig,
                   result: CleanResult) -> list[tuple[int, dict[str, Any]]]:
    """Drop train rows similar to any validation/test row of this batch or of the history."""
    index = SimilarityIndex(threshold, config.clean)
    for number, row in enumerate(history.rows):
        if row["split"] in EVALUATION_SPLITS:
            index.add(("history", number), history_sketches.shingles[number], history_sketches.minhashes[number])
    for position, row in dataset:
        if row["split"] in EVALUATION_SPLITS:
            index.add(("batch", position), sketches.shingles[position], sketches.minhashes[position])
    if not index.shingles:
        return dataset
    kept = []
    for position, row in dataset:
        if row["split"] == "train" and index.matches(sketches.shingles[position], sketches.minhashes[position]):
            result.count("leakage_removed", row["id"])
            continue
        kept.append((position, row))
    return kept


def run(config: PipelineConfig, inputs: Mapping[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None) -> Manifest:
    snapshots = prior_snapshots(store, run_id, logical_date)

    def body(context: StepContext) -> None:
        rows = read_rows(context.input_path("validate", "valid"))
        result = clean_rows(rows, config, load_history(store, snapshots, config.clean))

        write_parquet(result.dataset, context.out_dir / "dataset.parquet", schema=DATASET_SCHEMA)
        write_parquet(result.quarantine, context.out_dir / "quarantine.parquet", schema=QUARANTINE_SCHEMA)
        report = {"rows_in": len(rows), "rows_out": len(result.dataset), "counts": result.counts,
                  "examples": result.examples, "prior_snapshots": len(snapshots),
                  "near_duplicate_threshold": config.clean.near_duplicate_threshold,
                  "leakage_threshold": config.clean.leakage_threshold, "shingles": config.clean.shingles}
        (context.out_dir / "clean_report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
        rows_per_split = {split: sum(row["split"] == split for row in result.dataset) for split in SPLITS}
        context.add_output("dataset", "dataset.parquet", "dataset", rows=len(result.dataset), splits=rows_per_split)
        context.add_output("quarantine", "quarantine.parquet", "dataset", rows=len(result.quarantine))
        context.add_output("clean_report", "clean_report.json", "report")
        context.metrics.update({"rows_in": len(rows), "rows_out": len(result.dataset),
                            "rows_quarantined": len(result.quarantine),
                            **{f"rows_{split}": count for split, count in rows_per_split.items()},
                            **result.counts})
        # Downstream steps (train, evaluate) find the old data from this manifest alone.
        context.facts.update(CleanFacts(prior_snapshots=[Snapshot.model_validate(entry) for entry in snapshots]).dump())

    def track(manifest: Manifest) -> None:
        mlflow.log_artifact(str(store.local_path(manifest.output("clean_report").uri)))
        mlflow.log_artifact(str(store.local_path(manifest.output("quarantine").uri)))
        # Same names as validate's output and augment's input, so MLflow links the snapshots.
        valid, dataset = inputs["validate"].output("valid"), manifest.output("dataset")
        log_dataset(pd.read_parquet(store.local_path(valid.uri)), valid, name=f"{config.name}.valid",
                    context="input")
        log_dataset(pd.read_parquet(store.local_path(dataset.uri)), dataset,
                    name=f"{config.name}.dataset", context="output")

    manifest = execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                       config_sections=("clean", "split", "validate"),
                       extra_fingerprint={"prior_snapshots": [snapshot["digest"] for snapshot in snapshots]},
                       track=track)
    dataset = manifest.output("dataset")
    record_snapshot(store, {"run_id": run_id, "logical_date": logical_date, "uri": dataset.uri,
                            "digest": dataset.digest, "rows": dataset.rows})
    # The snapshot holds this run's batch and the stranded ones validate took in: accepted, once.
    accept_batches(store, [run_id, *(batch.run_id for batch in ValidateFacts.of(inputs["validate"]).inbox_batches)],
                   run_id)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
