"""The record schema, Parquet snapshots through Hugging Face `datasets`, the stable split of a record, and the
clean manifest's facts (the snapshots accepted before it), from which the evaluation slices are read.

`CleanFacts` lives here, not beside the clean step, because shared modules (the evaluation slices, the run's label
set, the monitor's reference) read it, and a shared module never imports a step."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from tasks.config import SplitConfig
from tasks.manifest import Manifest, StepFacts
from tasks.store import ArtifactStore

# The record schema every step after crawl reads and writes (augment adds `augmented_from`,
# clean adds `split`). `id` is stable across crawls; `content_hash` is of the raw text.
RECORD_COLUMNS = ("id", "text", "label", "source", "fetched_at", "content_hash")
RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("label", pa.string()),
        ("source", pa.string()),
        ("fetched_at", pa.string()),
        ("content_hash", pa.string()),
    ]
)
# What clean writes and augment extends: the records with their split and normalised-text hash.
DATASET_SCHEMA = RECORD_SCHEMA.append(pa.field("split", pa.string())).append(pa.field("normalized_hash", pa.string()))
QUARANTINE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("step", pa.string()),
        ("check", pa.string()),
        ("field", pa.string()),
        ("value", pa.string()),
        ("reason", pa.string()),
        ("record_json", pa.string()),
    ]
)
SPLITS = ("train", "validation", "test")


class Snapshot(BaseModel):
    """An accepted (cleaned) snapshot as the history records it (`tasks.snapshots`)."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    logical_date: str | None
    uri: str
    digest: str
    rows: int | None


class CleanFacts(StepFacts):
    """The snapshots accepted before this one, oldest first: downstream steps (train, evaluate, compress, register)
    find the old data from the clean manifest alone."""

    prior_snapshots: list[Snapshot]


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_of(record_id: str, config: SplitConfig) -> str:
    """Stable split by a hash of the id: a record never changes split between runs."""
    bucket = int.from_bytes(hashlib.sha256(f"{config.salt}:{record_id}".encode()).digest()[:8], "big") / 2**64
    if bucket < config.test_fraction:
        return "test"
    if bucket < config.test_fraction + config.validation_fraction:
        return "validation"
    return "train"


def write_parquet(rows: Sequence[Mapping[str, Any]] | pa.Table | datasets.Dataset, path: Path,
                  schema: pa.Schema | None = None) -> int:
    """Write rows as a Parquet snapshot (an empty batch keeps its schema); returns the row count."""
    if isinstance(rows, datasets.Dataset):
        table = rows.data.table
    elif isinstance(rows, pa.Table):
        table = rows
    else:
        table = pa.Table.from_pylist(list(rows), schema=schema) if schema is not None or rows else pa.table({})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return table.num_rows


def read_dataset(path: Path | str) -> datasets.Dataset:
    """An in-memory `datasets.Dataset` from a Parquet file (no cache files left behind)."""
    return datasets.Dataset(pq.read_table(str(path)))


def read_rows(path: Path | str) -> list[dict[str, Any]]:
    return pq.read_table(str(path)).to_pylist()


def concat_rows(parts: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for part in parts:
        rows.extend(part)
    return rows


def latest_versions(store: ArtifactStore, uris: Sequence[str],
                    newer_ids: Iterable[str] = ()) -> dict[str, list[dict[str, Any]]]:
    """Each snapshot's rows (by its uri) less those a later one supersedes: an id accepted again is an update (a new
    text, or a label edited in the annotation tool), and only its latest version counts. `uris` oldest first;
    `newer_ids`: the ids of a snapshot newer than all of them (this run's)."""
    seen = set(newer_ids)
    kept: dict[str, list[dict[str, Any]]] = {}
    for uri in reversed(uris):
        rows = read_rows(store.local_path(uri))
        kept[uri] = [row for row in rows if row["id"] not in seen]
        seen.update(row["id"] for row in rows)
    return kept


def evaluation_slices(clean: Manifest, store: ArtifactStore) -> dict[str, list[dict[str, Any]]]:
    """frozen / fresh / old test rows, from the clean manifest alone, each row in its latest version. A slice
    without rows is left out (a forced retry's empty snapshot has no fresh rows; a first snapshot may have no test
    rows)."""
    current = [row for row in read_rows(store.local_path(clean.output("dataset").uri)) if row["split"] == "test"]
    prior = [entry.uri for entry in CleanFacts.of(clean).prior_snapshots]
    # Test ids are test ids for good (the split hashes the id): only an update's version can change.
    kept = latest_versions(store, prior, (row["id"] for row in current))
    old = [row for uri in prior for row in kept[uri] if row["split"] == "test"]
    latest = {row["id"]: row for row in [*old, *current]}
    frozen = ([latest[row["id"]] for row in read_rows(store.local_path(prior[0])) if row["split"] == "test"]
              if prior else current)
    slices = {"frozen": frozen, "fresh": current, "old": old}
    return {name: rows for name, rows in slices.items() if rows}
