"""The history of accepted (cleaned) snapshots, oldest first: what decide counts and what train replays."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.store import ArtifactStore

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
