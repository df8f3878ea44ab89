"""decide: the training policy (new rows since the last training, drift, no champion, force) and its manifest."""

from __future__ import annotations

import pytest

from tasks import decide
from tasks.config import ScheduleConfig
from tasks.contract import StepContext, execute
from tasks.decide import DecideFacts
from tasks.store import ArtifactStore
from tests.pipeline_support import LABELS, tiny_config
from tests.schedule_support import ingest


def with_schedule(config, **settings):
    return config.model_copy(update={"schedule": ScheduleConfig(**settings)})


@pytest.mark.parametrize(("champion", "rows", "drift", "force", "train", "because"), [
    (False, 0, {}, False, True, "no champion yet"),
    (True, 120, {}, False, True, "120 new rows since the last training >= schedule.min_new_rows=100"),
    (True, 99, {"drift.label_psi": 0.04, "drift.length_psi": None}, False, False, "only 99 new rows"),
    (True, 10, {"drift.label_psi": 0.02, "drift.length_psi": 0.13}, False, True, "drift drift.length_psi=0.130"),
    (True, 0, {}, True, True, "forced"),
])
def test_policy(tmp_path, champion, rows, drift, force, train, because):
    config = with_schedule(tiny_config(tmp_path), min_new_rows=100, retrain_on_psi=0.1)
    verdict, reason = decide.decide(config, has_champion=champion, new_rows=rows, drift=drift, force=force)
    assert verdict is train
    assert because in reason


def test_skip_reason_names_the_numbers_and_settings(tmp_path):
    config = with_schedule(tiny_config(tmp_path), min_new_rows=100, retrain_on_psi=0.1)
    _, reason = decide.decide(config, has_champion=True, new_rows=7, drift={"drift.label_psi": 0.031})
    assert reason == ("only 7 new rows since the last training < schedule.min_new_rows=100 and no drift "
                      "(largest PSI 0.031 < schedule.retrain_on_psi=0.1)")


def mark_trained(config, store, run_id, day):
    def body(context: StepContext) -> None:
        (context.out_dir / "model.txt").write_text("stands in for a trained model")
        context.add_output("model", "model.txt", "model")

    execute("train", body, config, {}, run_id=run_id, store=store, logical_date=day)


def decide_for(config, store, run_id, day, upstream, champion=True):
    return decide.run(config, {"validate": upstream["validate"]}, run_id=run_id, store=store, logical_date=day,
                      champion=champion)


def test_new_rows_add_up_over_skipped_days_and_backfill_sees_only_its_past(tmp_path):
    from tests.corpus_support import synthetic_corpus

    config = with_schedule(tiny_config(tmp_path), min_new_rows=100, retrain_on_psi=0.1)
    store = ArtifactStore(config.artifact_root)
    corpus = synthetic_corpus(500, LABELS, seed=4)
    days = {"run-1": ("2026-11-01", corpus[:300]), "run-2": ("2026-11-02", corpus[300:340]),
            "run-3": ("2026-11-03", corpus[340:410]), "run-4": ("2026-11-04", corpus[410:420])}
    upstream = {run_id: ingest(config, store, run_id, day, rows) for run_id, (day, rows) in days.items()}

    first = decide_for(config, store, "run-1", "2026-11-01", upstream["run-1"], champion=False)
    facts = DecideFacts.of(first)
    assert facts.train and facts.last_training is None
    mark_trained(config, store, "run-1", "2026-11-01")

    second = decide_for(config, store, "run-2", "2026-11-02", upstream["run-2"])
    facts = DecideFacts.of(second)
    assert not facts.train
    assert second.metrics["rows_since_last_training"] == 40
    assert facts.last_training == {"run_id": "run-1", "logical_date": "2026-11-01"}
    assert "only 40 new rows" in facts.reason

    third = decide_for(config, store, "run-3", "2026-11-03", upstream["run-3"])
    facts = DecideFacts.of(third)
    assert facts.train, facts.reason
    assert third.metrics["rows_since_last_training"] == 110
    assert [entry["run_id"] for entry in facts.untrained_snapshots] == ["run-2", "run-3"]
    mark_trained(config, store, "run-3", "2026-11-03")

    fourth = decide_for(config, store, "run-4", "2026-11-04", upstream["run-4"])
    assert not DecideFacts.of(fourth).train and fourth.metrics["rows_since_last_training"] == 10

    # A backfill (or catch-up) of day 2 after days 3 and 4 ran: it counts only what had arrived by day 2,
    # and day 3's training (later) does not count as its last training.
    again = decide_for(config, store, "run-2", "2026-11-02", upstream["run-2"])
    facts = DecideFacts.of(again)
    assert not facts.train and again.metrics["rows_since_last_training"] == 40
    assert facts.last_training is not None and facts.last_training["run_id"] == "run-1"


def test_drift_trains_on_few_rows_and_the_manifest_records_why(tmp_path):
    from tasks.contract import read_manifest
    from tests.corpus_support import synthetic_corpus

    config = with_schedule(tiny_config(tmp_path), min_new_rows=100, retrain_on_psi=0.1)
    store = ArtifactStore(config.artifact_root)
    corpus = synthetic_corpus(400, LABELS, seed=5)
    ingest(config, store, "run-1", "2026-11-01", corpus[:300])
    mark_trained(config, store, "run-1", "2026-11-01")
    upstream = ingest(config, store, "run-2", "2026-11-02", corpus[300:330], psi=0.18)
    manifest = decide_for(config, store, "run-2", "2026-11-02", upstream)
    facts = DecideFacts.of(manifest)
    assert facts.train and "drift.label_psi=0.180 >= schedule.retrain_on_psi=0.1" in facts.reason
    stored = read_manifest(store, "run-2", "decide")
    assert stored is not None
    recorded = DecideFacts.of(stored)
    assert recorded.reason == facts.reason and recorded.drift["drift.label_psi"] == 0.18


def test_the_rows_decide_counted_train_as_new_rows_not_as_a_replay_sample(tmp_path):
    """A day too small to train (or whose training failed) leaves its rows waiting: the next round that trains
    takes them whole, as it takes its own, and replays only what an earlier round trained on."""
    from tasks.records import read_rows
    from tasks.train import _read_training_data, waiting_snapshots
    from tests.corpus_support import synthetic_corpus

    config = with_schedule(tiny_config(tmp_path, replay_fraction=0.0), min_new_rows=100, retrain_on_psi=None)
    store = ArtifactStore(config.artifact_root)
    corpus = synthetic_corpus(500, LABELS, seed=6)
    days = {"run-1": ("2026-11-01", corpus[:300]), "run-2": ("2026-11-02", corpus[300:360]),
            "run-3": ("2026-11-03", corpus[360:460])}
    upstream = {run_id: ingest(config, store, run_id, day, rows) for run_id, (day, rows) in days.items()}
    mark_trained(config, store, "run-1", "2026-11-01")
    assert not DecideFacts.of(decide_for(config, store, "run-2", "2026-11-02", upstream["run-2"])).train
    third = decide_for(config, store, "run-3", "2026-11-03", upstream["run-3"])
    assert DecideFacts.of(third).train and third.metrics["rows_since_last_training"] == 160

    waiting = waiting_snapshots(store, "run-3", "2026-11-03")
    assert [entry["run_id"] for entry in waiting] == ["run-2"]
    data = _read_training_data(config, upstream["run-3"], store, LABELS, waiting)
    day2_train = {row["id"] for row in read_rows(store.local_path(waiting[0]["uri"])) if row["split"] == "train"}
    day3_train = {row["id"] for row in data.train} - day2_train
    assert day2_train and day2_train <= {row["id"] for row in data.train}
    assert data.counts["rows_waiting"] == len(day2_train) and data.counts["rows_replay"] == 0
    assert not {row["id"] for row in corpus[:300]} & (day3_train | day2_train)  # day 1 trained: not new again
