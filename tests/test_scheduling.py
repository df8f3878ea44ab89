"""When the pipeline trains (decide), the source watcher behind the Asset schedule, and the rollback DAG."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from tasks import decide
from tasks.config import ScheduleConfig
from tasks.contract import StepContext, execute
from tasks.store import ArtifactStore
from tests.pipeline_fixtures import LABELS, tiny_config
from tests.schedule_fixtures import ingest


def with_schedule(config, **settings):
    return config.model_copy(update={"schedule": ScheduleConfig(**settings)})


# ------------------------------------------------------------------------------------- the policy

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


# ------------------------------------------------------------------- the step over a real history

def mark_trained(config, store, run_id, day):
    def body(context: StepContext) -> None:
        (context.out_dir / "model.txt").write_text("stands in for a trained model")
        context.add_output("model", "model.txt", "model")

    execute("train", body, config, {}, run_id=run_id, store=store, logical_date=day)


def decide_for(config, store, run_id, day, upstream, champion=True):
    return decide.run(config, {"validate": upstream["validate"]}, run_id=run_id, store=store, logical_date=day,
                      champion=champion)


def test_new_rows_add_up_over_skipped_days_and_backfill_sees_only_its_past(tmp_path):
    from tasks.demo_corpus import synthetic_corpus

    config = with_schedule(tiny_config(tmp_path), min_new_rows=100, retrain_on_psi=0.1)
    store = ArtifactStore(config.artifact_root)
    corpus = synthetic_corpus(500, LABELS, seed=4)
    days = {"run-1": ("2026-11-01", corpus[:300]), "run-2": ("2026-11-02", corpus[300:340]),
            "run-3": ("2026-11-03", corpus[340:410]), "run-4": ("2026-11-04", corpus[410:420])}
    upstream = {run_id: ingest(config, store, run_id, day, rows) for run_id, (day, rows) in days.items()}

    first = decide_for(config, store, "run-1", "2026-11-01", upstream["run-1"], champion=False)
    assert first.facts["train"] and first.facts["last_training"] is None
    mark_trained(config, store, "run-1", "2026-11-01")

    second = decide_for(config, store, "run-2", "2026-11-02", upstream["run-2"])
    assert not second.facts["train"]
    assert second.metrics["rows_since_last_training"] == 40
    assert second.facts["last_training"] == {"run_id": "run-1", "logical_date": "2026-11-01"}
    assert "only 40 new rows" in second.facts["reason"]

    third = decide_for(config, store, "run-3", "2026-11-03", upstream["run-3"])
    assert third.facts["train"], third.facts["reason"]
    assert third.metrics["rows_since_last_training"] == 110
    assert [entry["run_id"] for entry in third.facts["untrained_snapshots"]] == ["run-2", "run-3"]
    mark_trained(config, store, "run-3", "2026-11-03")

    fourth = decide_for(config, store, "run-4", "2026-11-04", upstream["run-4"])
    assert not fourth.facts["train"] and fourth.metrics["rows_since_last_training"] == 10

    # A backfill (or catch-up) of day 2 after days 3 and 4 ran: it counts only what had arrived by day 2,
    # and day 3's training (later) does not count as its last training.
    again = decide_for(config, store, "run-2", "2026-11-02", upstream["run-2"])
    assert not again.facts["train"] and again.metrics["rows_since_last_training"] == 40
    assert again.facts["last_training"]["run_id"] == "run-1"


def test_drift_trains_on_few_rows_and_the_manifest_records_why(tmp_path):
    from tasks.contract import read_manifest
    from tasks.demo_corpus import synthetic_corpus

    config = with_schedule(tiny_config(tmp_path), min_new_rows=100, retrain_on_psi=0.1)
    store = ArtifactStore(config.artifact_root)
    corpus = synthetic_corpus(400, LABELS, seed=5)
    ingest(config, store, "run-1", "2026-11-01", corpus[:300])
    mark_trained(config, store, "run-1", "2026-11-01")
    upstream = ingest(config, store, "run-2", "2026-11-02", corpus[300:330], psi=0.18)
    manifest = decide_for(config, store, "run-2", "2026-11-02", upstream)
    assert manifest.facts["train"] and "drift.label_psi=0.180 >= schedule.retrain_on_psi=0.1" in manifest.facts["reason"]
    stored = read_manifest(store, "run-2", "decide")
    assert stored.facts["reason"] == manifest.facts["reason"] and stored.facts["drift"]["drift.label_psi"] == 0.18


# ------------------------------------------------------------------------------------ the watcher

def test_watcher_sees_pages_the_crawler_has_not_fetched(tmp_path):
    from tasks import crawl
    from tasks.config import PipelineConfig
    from tasks.demo_corpus import synthetic_corpus
    from tasks.demo_site import serve
    from tasks.watch import pending_pages

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in synthetic_corpus(60, LABELS, seed=2)))
    with serve(corpus, dt.date(2026, 11, 1), days=2, initial_fraction=0.5) as site:
        data = tiny_config(tmp_path).to_dict()
        data["crawl"] = {"sources": [{"name": "site", "url": site.url, "allow_private_network": True}]}
        config = PipelineConfig.model_validate(data)
        store = ArtifactStore(config.artifact_root)
        before = pending_pages(config, store, until=dt.date(2026, 11, 1))
        assert list(before) == ["site"] and len(before["site"]) == 1
        crawl.run(config, {}, run_id="run-1", store=store, logical_date="2026-11-01")
        assert pending_pages(config, store, until=dt.date(2026, 11, 1)) == {}
        later = pending_pages(config, store, until=dt.date(2026, 11, 2))
        assert len(later["site"]) == 1 and later["site"][0] not in before["site"]


# ------------------------------------------------------------------------------- the rollback DAG

def test_rollback_dag_moves_champion_back_with_who_and_why(tmp_path, monkeypatch):
    import yaml
    from airflow.dag_processing.dagbag import DagBag

    from freshet_airflow import factory
    from tasks import registry
    from tests.airflow_fixtures import migrate_airflow_db
    from tests.conftest import REPO

    migrate_airflow_db()
    config = tiny_config(tmp_path)
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict()))
    factory.pipeline_config.cache_clear()
    client = registry.client(config)
    name = config.mlflow.model_name
    client.create_registered_model(name)
    for number in (1, 2):
        (tmp_path / f"model-{number}").mkdir()
        client.create_model_version(name, source=str(tmp_path / f"model-{number}"))
    client.set_registered_model_alias(name, registry.CHAMPION, "2")
    client.set_registered_model_alias(name, registry.PREVIOUS, "1")

    monkeypatch.setenv("FRESHET_CONFIG", str(config_path))
    dag = DagBag(dag_folder=str(REPO / "dags" / "freshet_rollback.py")).dags["freshet_rollback"]
    refused = dag.test(logical_date=dt.datetime(2026, 11, 4, tzinfo=dt.timezone.utc),
                       run_conf={"reason": "wrong labels in prod", "requested_by": "oncall", "expected_champion": "1"})
    assert {ti.task_id: ti.state for ti in refused.get_task_instances()} == {"rollback": "failed"}
    assert str(registry.version_by_alias(config, registry.CHAMPION).version) == "2", "the champion moved"

    run = dag.test(logical_date=dt.datetime(2026, 11, 5, tzinfo=dt.timezone.utc),
                   run_conf={"reason": "wrong labels in prod", "requested_by": "oncall", "expected_champion": "2"})
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {"rollback": "success"}
    assert str(registry.version_by_alias(config, registry.CHAMPION).version) == "1"
    assert registry.version_by_alias(config, registry.PREVIOUS) is None
    tags = client.get_model_version(name, "2").tags
    assert tags["freshet.rolled_back"].endswith("by oncall: wrong labels in prod")
    assert tags["freshet.rolled_back_by.airflow.dag_id"] == "freshet_rollback"
    assert tags["freshet.rolled_back_by.airflow.dag_run_id"] == run.run_id


def test_watch_dag_records_an_asset_event_only_when_a_page_is_new(tmp_path, monkeypatch):
    """The real `freshet_watch` DAG against the demo site: a new page → an event on the pipeline's
    source Asset (what starts `freshet` early); nothing new → the task skips and no event is recorded."""
    import yaml
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from freshet_airflow import factory
    from tasks import crawl
    from tasks.config import PipelineConfig
    from tasks.demo_corpus import synthetic_corpus
    from tasks.demo_site import serve
    from tests.airflow_fixtures import migrate_airflow_db
    from tests.conftest import REPO

    migrate_airflow_db()
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in synthetic_corpus(60, LABELS, seed=2)))
    with serve(corpus, dt.date(2026, 11, 1), days=1, initial_fraction=0.5) as site:
        data = tiny_config(tmp_path).to_dict()
        data["name"] = "watched"
        data["crawl"] = {"sources": [{"name": "site", "url": site.url, "allow_private_network": True}]}
        config = PipelineConfig.model_validate(data)
        config_path = tmp_path / "pipeline.yaml"
        config_path.write_text(yaml.safe_dump(config.to_dict()))
        factory.pipeline_config.cache_clear()
        monkeypatch.setenv("FRESHET_CONFIG", str(config_path))
        dag = DagBag(dag_folder=str(REPO / "dags" / "freshet_watch.py")).dags["freshet_watch"]
        asset_name = factory.source_asset(config).name

        def events() -> list[dict]:
            with create_session() as session:
                return [event.extra for event in session.scalars(
                    select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                    .where(AssetModel.name == asset_name))]

        first = dag.test(logical_date=dt.datetime(2026, 11, 5, 10, tzinfo=dt.timezone.utc))
        assert {ti.task_id: ti.state for ti in first.get_task_instances()} == {"watch": "success"}
        (event,) = events()
        assert event["pages"] == {"site": 2}  # both published days are new to the crawler

        crawl.run(config, {}, run_id="run-1", store=ArtifactStore(config.artifact_root), logical_date="2026-11-05")
        second = dag.test(logical_date=dt.datetime(2026, 11, 5, 11, tzinfo=dt.timezone.utc))
        assert {ti.task_id: ti.state for ti in second.get_task_instances()} == {"watch": "skipped"}
        assert len(events()) == 1
