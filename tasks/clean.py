"""Clean a validated batch: normalise texts, de-duplicate within the batch and against history, assign splits.

Normalisation, in order: strip HTML tags and decode entities (`clean.strip_markup`), Unicode
normalisation (`clean.unicode_form`), removal of control and invisible format characters, whitespace
collapse, optional lowercasing. Rows that end up shorter than `validate.min_text_chars` are
quarantined (`clean.too_short`). Rows sharing a normalised text keep the first occurrence; if they
disagree on the label all of them are quarantined (`clean.label_conflict`). Texts already in an
earlier accepted snapshot are dropped and counted (known data); a known id with a new text is kept as
an update. Every count is in `clean_report.json`. The snapshot is then recorded in the history.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import CleanConfig, PipelineConfig
from tasks.contract import Manifest, StepContext, StepError, cli, execute
from tasks.data import (
    QUARANTINE_SCHEMA,
    RECORD_SCHEMA,
    SPLITS,
    content_hash,
    prior_snapshots,
    read_rows,
    record_snapshot,
    split_of,
    write_parquet,
)
from tasks.store import ArtifactStore
from tasks.tracking import log_dataset, log_manifest, step_run

STEP = "clean"
DATASET_SCHEMA = RECORD_SCHEMA.append(pa.field("split", pa.string())).append(pa.field("normalized_hash", pa.string()))
NORMALISATION_RULES = ("markup_stripped", "unicode_changed", "control_chars_removed", "whitespace_collapsed",
                       "lowercased")
REMOVAL_RULES = ("duplicates_in_batch", "duplicates_of_history", "label_conflicts", "too_short")
EXAMPLE_IDS = 5

# Only real HTML element names count as tags, so `<maintainer@debian.org>` or `vector<T>` survive.
INLINE_TAGS = frozenset("a abbr b bdi bdo cite code data del dfn em font i ins kbd mark q s samp small span strike "
                        "strong sub sup time tt u var wbr".split())
BLOCK_TAGS = frozenset("address article aside blockquote body br caption dd details div dl dt figcaption figure "
                       "footer h1 h2 h3 h4 h5 h6 head header hr html img li main nav ol p pre section summary table "
                       "tbody td tfoot th thead title tr ul".split())
TAG = re.compile(r"</?([A-Za-z][A-Za-z0-9]*)\b[^<>]*/?>")
SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# Invisible format characters that survive NFKC and split or glue words unseen.
INVISIBLE = frozenset("\u00ad\u200b\u2060\ufeff")


def strip_markup(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1).lower()
        if name in INLINE_TAGS:
            return ""
        # A block boundary separates words ("a<br>b" is two words).
        return " " if name in BLOCK_TAGS else match.group(0)

    text = COMMENT.sub(" ", SCRIPT_OR_STYLE.sub(" ", text))
    return html.unescape(TAG.sub(replace, text))


def remove_control_characters(text: str) -> str:
    # Line breaks and tabs are whitespace, left for the collapse; other C0/C1 controls go.
    return "".join(char for char in text
                   if char in "\t\n\r" or (unicodedata.category(char) != "Cc" and char not in INVISIBLE))


def collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Normalised:
    text: str
    changed_by: frozenset[str]  # the normalisation rules that changed this text


def normalise(text: str, config: CleanConfig) -> Normalised:
    """Apply the normalisation rules in order, noting which ones changed the text."""
    stages = [
        ("markup_stripped", strip_markup if config.strip_markup else None),
        ("unicode_changed", lambda value: unicodedata.normalize(config.unicode_form, value)),
        ("control_chars_removed", remove_control_characters),
        ("whitespace_collapsed", collapse_whitespace),
        ("lowercased", str.lower if config.lowercase else None),
    ]
    changed: set[str] = set()
    for rule, transform in stages:
        if transform is None:
            continue
        result = transform(text)
        if result != text:
            changed.add(rule)
        text = result
    return Normalised(text, frozenset(changed))


def quarantine_record(row: Mapping[str, Any], check: str, field: str, value: Any, reason: str) -> dict[str, Any]:
    return {
        "id": row["id"], "source": row.get("source"), "step": STEP, "check": check, "field": field,
        "value": None if value is None else str(value), "reason": reason,
        "record_json": json.dumps(dict(row), ensure_ascii=False, default=str),
    }


@dataclass(frozen=True)
class History:
    """What earlier accepted snapshots hold: the labels of each normalised text (by hash), and the ids."""

    labels_of_text: Mapping[str, set[str]]
    ids: set[str]


def load_history(store: ArtifactStore, snapshots: Iterable[Mapping[str, Any]], config: CleanConfig) -> History:
    labels_of_text: dict[str, set[str]] = {}
    ids: set[str] = set()
    for snapshot in snapshots:
        try:
            table = pq.read_table(store.local_path(snapshot["uri"]), columns=["id", "text", "label"])
        except FileNotFoundError as error:
            raise StepError(f"{STEP}: snapshot of run {snapshot['run_id']!r} is listed in the history "
                            f"but missing at {snapshot['uri']}") from error
        for row in table.to_pylist():
            # Re-normalised with today's rules, so a changed clean config still compares like with like.
            text_hash = content_hash(normalise(row["text"], config).text)
            labels_of_text.setdefault(text_hash, set()).add(row["label"])
            ids.add(row["id"])
    return History(labels_of_text, ids)


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
    counts = dict.fromkeys((*NORMALISATION_RULES, *REMOVAL_RULES, "history_label_disagreements",
                            "updates_of_history"), 0)
    result = CleanResult(dataset=[], quarantine=[], counts=counts, examples={})
    min_chars = config.validate_.min_text_chars

    # Normalise, and group the original rows by their normalised text (insertion order = batch order).
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        normalised = normalise(row["text"], config.clean)
        for rule in sorted(normalised.changed_by):
            result.count(rule, row["id"])
        if len(normalised.text) < min_chars:
            result.count("too_short", row["id"])
            result.quarantine.append(quarantine_record(
                row, "clean.too_short", "text", normalised.text,
                f"normalised text has {len(normalised.text)} characters, "
                f"fewer than validate.min_text_chars={min_chars}"))
            continue
        groups.setdefault(normalised.text, []).append(row)

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
        if text_hash in history.labels_of_text:
            result.count("duplicates_of_history", first["id"])
            if first["label"] not in history.labels_of_text[text_hash]:
                result.count("history_label_disagreements", first["id"])
            continue
        # A known id whose text is new (a known text was dropped above): an update, kept.
        if first["id"] in history.ids:
            result.count("updates_of_history", first["id"])
        result.dataset.append({**first, "text": text, "normalized_hash": text_hash,
                               "split": split_of(first["id"], config.split)})
    return result


def run(config: PipelineConfig, inputs: Mapping[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None) -> Manifest:
    snapshots = prior_snapshots(store, run_id, logical_date)

    def body(ctx: StepContext) -> None:
        rows = read_rows(ctx.input_path("validate", "valid"))
        result = clean_rows(rows, config, load_history(store, snapshots, config.clean))

        write_parquet(result.dataset, ctx.out_dir / "dataset.parquet", schema=DATASET_SCHEMA)
        write_parquet(result.quarantine, ctx.out_dir / "quarantine.parquet", schema=QUARANTINE_SCHEMA)
        report = {"rows_in": len(rows), "rows_out": len(result.dataset), "counts": result.counts,
                  "examples": result.examples, "prior_snapshots": len(snapshots)}
        (ctx.out_dir / "clean_report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
        rows_per_split = {split: sum(row["split"] == split for row in result.dataset) for split in SPLITS}
        ctx.add_output("dataset", "dataset.parquet", "dataset", rows=len(result.dataset), splits=rows_per_split)
        ctx.add_output("quarantine", "quarantine.parquet", "dataset", rows=len(result.quarantine))
        ctx.add_output("clean_report", "clean_report.json", "report")
        ctx.metrics.update({"rows_in": len(rows), "rows_out": len(result.dataset),
                            "rows_quarantined": len(result.quarantine),
                            **{f"rows_{split}": count for split, count in rows_per_split.items()},
                            **result.counts})
        # Downstream steps (train, evaluate) find the old data from this manifest alone.
        ctx.facts["prior_snapshots"] = snapshots

    manifest = execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                       config_sections=("clean", "split", "validate"),
                       extra_fingerprint={"prior_snapshots": [snapshot["digest"] for snapshot in snapshots]})
    dataset = manifest.output("dataset")
    record_snapshot(store, {"run_id": run_id, "logical_date": logical_date, "uri": dataset.uri,
                            "digest": dataset.digest, "rows": dataset.rows})
    if not manifest.reused:
        import mlflow

        with step_run(config, run_id, STEP, logical_date):
            log_manifest(manifest)
            mlflow.log_artifact(str(store.local_path(manifest.output("clean_report").uri)))
            mlflow.log_artifact(str(store.local_path(manifest.output("quarantine").uri)))
            log_dataset(pd.read_parquet(store.local_path(dataset.uri)), dataset,
                        name=f"{config.name}.dataset", context=STEP)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
