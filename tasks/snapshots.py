"""The history of accepted (cleaned) snapshots, oldest first: what decide counts, what train takes as new rows
(every snapshot since the last training) and what it replays (the earlier ones)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.contract import read_manifest
from tasks.manifest import Manifest
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


def last_training(store: ArtifactStore, run_id: str, logical_date: str | None) -> Manifest | None:
    """The latest train manifest of another run at or before this logical date (None: never trained)."""
    trained = [manifest for directory in store.run_directories()
               if (manifest := read_manifest(store, directory, "train")) is not None and manifest.run_id != run_id
               and (logical_date is None or (manifest.logical_date or "") <= logical_date)]
    return max(trained, key=lambda manifest: (manifest.logical_date or "", manifest.created_at), default=None)


def untrained_snapshots(store: ArtifactStore, since: str | None, run_id: str,
                        logical_date: str | None) -> list[dict[str, Any]]:
    """History snapshots after the last training's logical date, up to and including this run."""
    return [entry for entry in read_history(store)
            if (since is None or (entry.get("logical_date") or "") > since)
            and (entry["run_id"] == run_id or logical_date is None
                 or (entry.get("logical_date") or "") <= logical_date)]
