"""Record schema, Parquet snapshots through Hugging Face `datasets`, stable splits, snapshot history."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import SplitConfig
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


# ------------------------------------------------------------------ history of accepted snapshots

HISTORY = ("state", "history.json")


def read_history(store: ArtifactStore) -> list[dict[str, Any]]:
    """Accepted (cleaned) snapshots, oldest first: [{run_id, logical_date, uri, digest, rows}]."""
    return store.read_json(*HISTORY) or []


def record_snapshot(store: ArtifactStore, entry: Mapping[str, Any]) -> None:
    """Upsert this run's snapshot (a retried run replaces its own entry, never duplicates it)."""
    history = [item for item in read_history(store) if item["run_id"] != entry["run_id"]]
    history.append(dict(entry))
    history.sort(key=lambda item: (item.get("logical_date") or "", item["run_id"]))
    store.write_json(history, *HISTORY)


def prior_snapshots(store: ArtifactStore, run_id: str, logical_date: str | None) -> list[dict[str, Any]]:
    """Snapshots accepted before this run (by logical date), oldest first."""
    return [
        item for item in read_history(store)
        if item["run_id"] != run_id and (logical_date is None or (item.get("logical_date") or "") < logical_date)
    ]
