"""Nothing stranded: a run that dies after its crawl leaves its batch in the inbox; the next run takes it in
(exactly once), and clearing the failed run later ingests nothing twice. A rejected batch is set aside."""

from __future__ import annotations

import pytest

from tasks import clean, inbox, validate
from tasks.contract import StepContext, execute
from tasks.manifest import StepError
from tasks.records import RECORD_SCHEMA, content_hash, read_rows, write_parquet
from tasks.snapshots import read_history
from tasks.store import ArtifactStore
from tests.corpus_support import synthetic_corpus
from tests.pipeline_support import LABELS, tiny_config


def crawl(config, store, run_id, day, rows):
    """A committed crawl batch posted to the inbox, as tasks.crawl does after its commit."""
    records = [{"id": row["id"], "text": row["text"], "label": row["label"], "source": "unit",
                "fetched_at": f"{day}T00:00:00+00:00", "content_hash": content_hash(row["text"])} for row in rows]

    def body(context: StepContext) -> None:
        write_parquet(records, context.out_dir / "records.parquet", schema=RECORD_SCHEMA)
        context.add_output("records", "records.parquet", "dataset", rows=len(records))
        context.metrics["rows_new"] = len(records)

    manifest = execute("crawl", body, config, {}, run_id=run_id, store=store, logical_date=day,
                       extra_fingerprint={"ids": [row["id"] for row in rows]})
    inbox.post_batch(store, manifest)
    return manifest


def ingest(config, store, run_id, day, crawled):
    validated = validate.run(config, {"crawl": crawled}, run_id=run_id, store=store, logical_date=day)
    return clean.run(config, {"validate": validated}, run_id=run_id, store=store, logical_date=day)


@pytest.fixture()
def days(tmp_path):
    config = tiny_config(tmp_path)
    corpus = synthetic_corpus(240, LABELS, seed=5)
    return config, ArtifactStore(config.artifact_root), [corpus[:80], corpus[80:160], corpus[160:]]


def test_a_run_failed_at_clean_has_its_rows_taken_in_by_the_next_run_exactly_once(days, monkeypatch):
    config, store, (first, second, third) = days
    ingest(config, store, "run-1", "2026-11-01", crawl(config, store, "run-1", "2026-11-01", first))

    crawled_2 = crawl(config, store, "run-2", "2026-11-02", second)
    real_clean_rows = clean.clean_rows

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in clean")

    monkeypatch.setattr(clean, "clean_rows", broken)
    with pytest.raises(RuntimeError, match="a bug in clean"):
        ingest(config, store, "run-2", "2026-11-02", crawled_2)
    monkeypatch.setattr(clean, "clean_rows", real_clean_rows)

    third_clean = ingest(config, store, "run-3", "2026-11-03", crawl(config, store, "run-3", "2026-11-03", third))
    taken_in = {row["id"] for row in read_rows(store.local_path(third_clean.output("dataset").uri))}
    assert {row["id"] for row in second} <= taken_in and {row["id"] for row in third} <= taken_in
    assert {entry["run_id"]: entry["accepted_by"] for entry in inbox.read_inbox(store)} == {
        "run-1": "run-1", "run-2": "run-3", "run-3": "run-3"}

    # An operator clears the failed run: its batch is already in run-3's snapshot, so nothing is doubled.
    with pytest.raises(StepError, match="already accepted by run run-3"):
        ingest(config, store, "run-2", "2026-11-02", crawled_2)
    history_ids = [row["id"] for entry in read_history(store) for row in read_rows(store.local_path(entry["uri"]))]
    assert sorted(history_ids) == sorted(set(history_ids)), "a record accepted twice"
    assert {row["id"] for row in second} <= set(history_ids)
    assert [entry["run_id"] for entry in read_history(store)] == ["run-1", "run-3"]


def test_a_rejected_batch_is_set_aside_not_retried_by_every_later_run(days):
    config, store, (first, second, _) = days
    ingest(config, store, "run-1", "2026-11-01", crawl(config, store, "run-1", "2026-11-01", first))
    bad = [dict(row, label="not-a-label") for row in second]  # every row fails the label set: batch rejected
    with pytest.raises(StepError):
        ingest(config, store, "run-2", "2026-11-02", crawl(config, store, "run-2", "2026-11-02", bad))
    entry = next(entry for entry in inbox.read_inbox(store) if entry["run_id"] == "run-2")
    assert entry["rejected_by"] == "run-2" and entry["accepted_by"] is None and entry["rejected_why"]
    assert inbox.pending_batches(store, "run-3") == []
