"""The inbox of committed crawl batches: every run takes in all batches no run has accepted yet, in order.

The crawl state advances when a crawl commits, so a run that dies for good after its crawl (a bug in a
later step, a lost machine, a run nobody clears) would strand its records: the next crawl does not emit
them again. So each committed crawl posts its batch here; validate takes every pending batch (its own
and the stranded ones, oldest first), and clean marks them accepted when it records the run's snapshot.
A batch is accepted once: a failed run cleared later finds its batch accepted by the run that took it
in. A batch that validation rejected is set aside (with the run and the reason), not retried by every
later run; it stays in the inbox for an operator.

State: `state/inbox.json`, a list of {run_id, logical_date, records, quarantine (URIs), digest, rows,
posted_at, accepted_by, rejected_by, rejected_why}.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from tasks.manifest import Manifest
from tasks.store import ArtifactStore

INBOX = ("state", "inbox.json")


def read_inbox(store: ArtifactStore) -> list[dict[str, Any]]:
    return store.read_json(*INBOX) or []


def _write(store: ArtifactStore, entries: list[dict[str, Any]]) -> None:
    entries.sort(key=lambda entry: (entry.get("logical_date") or "", entry["posted_at"], entry["run_id"]))
    store.write_json(entries, *INBOX)


def post_batch(store: ArtifactStore, crawl: Manifest) -> None:
    """Post a committed crawl's batch (idempotent: a retried or reused crawl posts the same entry once)."""
    entries = read_inbox(store)
    if any(entry["run_id"] == crawl.run_id for entry in entries):
        return
    records = crawl.output("records")
    entries.append({
        "run_id": crawl.run_id, "logical_date": crawl.logical_date, "records": records.uri,
        "quarantine": crawl.output("quarantine").uri if "quarantine" in crawl.outputs else None,
        "digest": records.digest, "rows": records.rows, "posted_at": crawl.created_at,
        "accepted_by": None, "rejected_by": None, "rejected_why": None,
    })
    _write(store, entries)


def pending_batches(store: ArtifactStore, run_id: str) -> list[dict[str, Any]]:
    """Batches this run takes in, oldest first: every one not accepted or set aside by another run."""
    return [entry for entry in read_inbox(store)
            if entry["accepted_by"] in (None, run_id) and entry["rejected_by"] in (None, run_id)]


def taken_elsewhere(store: ArtifactStore, run_id: str) -> dict[str, Any] | None:
    """This run's own batch, when another run already accepted or set it aside."""
    own = next((entry for entry in read_inbox(store) if entry["run_id"] == run_id), None)
    if own is None or (own["accepted_by"] in (None, run_id) and own["rejected_by"] in (None, run_id)):
        return None
    return own


def _mark(store: ArtifactStore, run_ids: Iterable[str], **fields: Any) -> None:
    wanted = set(run_ids)
    entries = read_inbox(store)
    for entry in entries:
        if entry["run_id"] in wanted:
            entry.update(fields)
    _write(store, entries)


def accept_batches(store: ArtifactStore, run_ids: Iterable[str], by_run: str) -> None:
    """The batches are in `by_run`'s accepted snapshot: no later run takes them in again."""
    _mark(store, run_ids, accepted_by=by_run, accepted_at=dt.datetime.now(dt.UTC).isoformat())


def set_aside(store: ArtifactStore, run_ids: Iterable[str], by_run: str, why: str) -> None:
    """Validation rejected the batches: kept for an operator, not retried by every later run."""
    _mark(store, run_ids, rejected_by=by_run, rejected_why=why[:2000])
