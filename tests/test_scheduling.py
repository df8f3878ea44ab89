"""The source watcher behind the Asset schedule, and the rollback DAG."""

from __future__ import annotations

import datetime as dt
import json

from tasks.store import ArtifactStore
from tests.pipeline_support import LABELS, tiny_config

# ------------------------------------------------------------------------------------- the policy





# ------------------------------------------------------------------- the step over a real history









# ------------------------------------------------------------------------------------ the watcher

def test_watcher_sees_pages_the_crawler_has_not_fetched(tmp_path):
    from tasks import crawl
    from tasks.config import PipelineConfig
    from tasks.demo.site import serve
    from tasks.sources.watch import pending_pages
    from tests.corpus_support import synthetic_corpus

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

    from freshet_airflow import dag_settings
    from tasks import model_registry
    from tests.airflow_support import migrate_airflow_db
    from tests.conftest import REPO

    migrate_airflow_db()
    config = tiny_config(tmp_path)
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict()))
    dag_settings.pipeline_config.cache_clear()
    client = model_registry.client(config)
    name = config.mlflow.model_name
    client.create_registered_model(name)
    for number in (1, 2):
        (tmp_path / f"model-{number}").mkdir()
        client.create_model_version(name, source=str(tmp_path / f"model-{number}"))
    client.set_registered_model_alias(name, model_registry.CHAMPION, "2")
    client.set_registered_model_alias(name, model_registry.PREVIOUS, "1")

    monkeypatch.setenv("FRESHET_CONFIG", str(config_path))
    dag = DagBag(dag_folder=str(REPO / "dags" / "freshet_rollback.py")).dags["freshet_rollback"]
    refused = dag.test(logical_date=dt.datetime(2026, 11, 4, tzinfo=dt.UTC),
                       run_conf={"reason": "wrong labels in prod", "requested_by": "oncall", "expected_champion": "1"})
    assert {ti.task_id: ti.state for ti in refused.get_task_instances()} == {"rollback": "failed"}
    assert str(model_registry.version_by_alias(config, model_registry.CHAMPION).version) == "2", "the champion moved"

    run = dag.test(logical_date=dt.datetime(2026, 11, 5, tzinfo=dt.UTC),
                   run_conf={"reason": "wrong labels in prod", "requested_by": "oncall", "expected_champion": "2"})
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {"rollback": "success"}
    assert str(model_registry.version_by_alias(config, model_registry.CHAMPION).version) == "1"
    assert model_registry.version_by_alias(config, model_registry.PREVIOUS) is None
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

    from freshet_airflow import assets, dag_settings
    from tasks import crawl
    from tasks.config import PipelineConfig
    from tasks.demo.site import serve
    from tests.airflow_support import migrate_airflow_db
    from tests.conftest import REPO
    from tests.corpus_support import synthetic_corpus

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
        dag_settings.pipeline_config.cache_clear()
        monkeypatch.setenv("FRESHET_CONFIG", str(config_path))
        dag = DagBag(dag_folder=str(REPO / "dags" / "freshet_watch.py")).dags["freshet_watch"]
        asset_name = assets.source_asset(config).name

        def events() -> list[dict]:
            with create_session() as session:
                return [event.extra for event in session.scalars(
                    select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                    .where(AssetModel.name == asset_name))]

        first = dag.test(logical_date=dt.datetime(2026, 11, 5, 10, tzinfo=dt.UTC))
        assert {ti.task_id: ti.state for ti in first.get_task_instances()} == {"watch": "success"}
        (event,) = events()
        assert event["pages"] == {"site": 2}  # both published days are new to the crawler

        crawl.run(config, {}, run_id="run-1", store=ArtifactStore(config.artifact_root), logical_date="2026-11-05")
        second = dag.test(logical_date=dt.datetime(2026, 11, 5, 11, tzinfo=dt.UTC))
        assert {ti.task_id: ti.state for ti in second.get_task_instances()} == {"watch": "skipped"}
        assert len(events()) == 1
