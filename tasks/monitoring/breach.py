"""Breaches of the production monitor: emitted, held back by the cooldown, consumed by `decide`.

A monitor run whose checks fail emits a breach unless another run emitted one within
`monitor.cooldown_hours` (measured in data time: the logical day a monitor run watched, so a backfill or
the demo's simulated days behave like real ones, and the hourly runs of one day share one breach). The
breach is filed after the monitor's manifest commits:

- `state/monitor/breaches.json`: every emitted breach, oldest first (a rerun of a run replaces its own);
- `state/monitor/breach.json`: the latest one (what an operator reads).

`decide` trains on the breaches no earlier `decide` consumed (it records the ids it consumed in its
manifest's `production_drift` facts, and finds the pending ones itself: `tasks.decide.pending_breaches`); only
breaches of monitor days up to the decide's logical date count.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from tasks.store import ArtifactStore

STATE = ("state", "monitor")
BREACHES = (*STATE, "breaches.json")
LATEST = (*STATE, "breach.json")


def read_breaches(store: ArtifactStore) -> list[dict[str, Any]]:
    return store.read_json(*BREACHES) or []


def at(breach: Mapping[str, Any]) -> dt.datetime:
    moment = dt.datetime.fromisoformat(str(breach["at"]))
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment


def blocking(store: ArtifactStore, moment: dt.datetime, hours: float,
             exclude_run_id: str | None = None) -> dict[str, Any] | None:
    """The breach emitted by another run within `hours` of data time of `moment` (before or after it: a backfill
    next to a breach is held back too), the nearest; None: a breach at `moment` would be emitted."""
    near = [item for item in read_breaches(store) if item["run_id"] != exclude_run_id
            and abs((moment - at(item)).total_seconds()) < hours * 3600]
    return min(near, key=lambda item: abs((moment - at(item)).total_seconds()), default=None)


def hours_apart(breach: Mapping[str, Any], moment: dt.datetime) -> float:
    return abs((moment - at(breach)).total_seconds()) / 3600


def publish(store: ArtifactStore, breach: Mapping[str, Any]) -> None:
    """File an emitted breach (upsert by run id), and make it `breach.json` if it is the latest."""
    breaches = [item for item in read_breaches(store) if item["run_id"] != breach["run_id"]]
    breaches.append(dict(breach))
    breaches.sort(key=lambda item: (at(item), item["run_id"]))
    store.write_json(breaches, *BREACHES)
    store.write_json(breaches[-1], *LATEST)

