"""The DAGs parse without import errors, have every step wired in order, tags, schedule and run
settings from the config, and parse fast."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.conftest import REPO

EXPECTED_ORDER = ["crawl", "new_data", "validate", "clean", "augment", "decide", "should_train", "train", "evaluate",
                  "compress",
                  "register", "gate", "promote"]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    bag = DagBag(dag_folder=str(REPO / "dags"))
    return bag, time.perf_counter() - started


def test_no_import_errors_and_quick_parse(dagbag):
    bag, seconds = dagbag
    assert bag.import_errors == {}
    assert seconds < 20, f"DAG folder took {seconds:.1f}s to parse: keep heavy imports out of DAG files"


def test_pipeline_has_every_step_in_order_with_tags(dagbag):
    bag, _ = dagbag
    dag = bag.dags["freshet"]
    assert set(dag.task_ids) == set(EXPECTED_ORDER)
    for upstream, downstream in itertools.pairwise(EXPECTED_ORDER):
        assert downstream in dag.get_task(upstream).downstream_task_ids, f"{upstream} -> {downstream} missing"
    assert {"freshet", "continuous-learning"} <= set(dag.tags)
    assert dag.max_active_runs == 1
    assert dag.get_task("train").__class__.__name__ == "DDPTrainOperator"
    assert {"freshet_watch", "freshet_rollback", "freshet_score", "freshet_monitor"} <= set(bag.dags)


def test_schedule_is_daily_or_new_source_pages(dagbag):
    from airflow.sdk import AssetOrTimeSchedule

    bag, _ = dagbag
    schedule = bag.dags["freshet"].timetable
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert schedule.timetable.expression == "0 0 * * *"
    watched = bag.dags["freshet_watch"].get_task("watch").outlets
    breached = bag.dags["freshet_monitor"].get_task("production_drift").outlets
    # Either Asset starts a run: new source pages, or a breach of the production monitor.
    assert type(schedule.asset_condition).__name__ == "AssetAny"
    assert [asset.name for asset in [*watched, *breached]] == [asset.name for asset in schedule.asset_condition.objects]
    assert "force_training" in bag.dags["freshet"].params


def test_training_is_pooled_and_only_network_steps_retry(dagbag):
    bag, _ = dagbag
    dag = bag.dags["freshet"]
    assert dag.get_task("train").pool == "freshet_training"
    for task_id in ("crawl", "register", "promote"):
        task = dag.get_task(task_id)
        assert task.retries == 3 and task.retry_exponential_backoff, task_id
    for task_id in ("new_data", "validate", "clean", "augment", "decide", "should_train", "evaluate", "compress",
                    "gate"):
        assert dag.get_task(task_id).retries == 0, task_id
    assert bag.dags["freshet_rollback"].get_task("rollback").retries == 0
    for dag_id, task_ids in {"freshet_score": ("score", "predictions_scored"),
                             "freshet_monitor": ("monitor", "production_drift")}.items():
        for task_id in task_ids:
            assert bag.dags[dag_id].get_task(task_id).retries == 0, (dag_id, task_id)


def test_score_and_monitor_dags_run_their_steps_and_update_their_assets(dagbag):
    bag, _ = dagbag
    score, monitor = bag.dags["freshet_score"], bag.dags["freshet_monitor"]
    assert score.get_task("score").__class__.__name__ == "FreshetStepOperator"
    assert score.get_task("score").downstream_task_ids == {"predictions_scored"}
    assert monitor.get_task("monitor").__class__.__name__ == "FreshetStepOperator"
    assert monitor.get_task("monitor").downstream_task_ids == {"production_drift"}
    assert score.timetable.expression == "0 0 * * *"
    # Daily, and whenever the prediction log's Asset is updated (by batch scoring, or the REST API).
    logged = [asset.name for asset in score.get_task("predictions_scored").outlets]
    assert logged == ["freshet.freshet_demo.prediction_log"]
    assert type(monitor.timetable).__name__ == "AssetOrTimeSchedule"
    assert monitor.timetable.timetable.expression == "0 0 * * *"
    assert [monitor.timetable.asset_condition.name] == logged
    assert [asset.name for asset in monitor.get_task("production_drift").outlets] == [
        "freshet.freshet_demo.production_drift"]
    assert score.max_active_runs == monitor.max_active_runs == 1


def test_rollback_dag_is_manual_and_asks_why(dagbag):
    bag, _ = dagbag
    dag = bag.dags["freshet_rollback"]
    assert type(dag.timetable).__name__ == "NullTimetable"  # schedule=None: manual only
    assert set(dag.params) == {"reason", "requested_by", "expected_champion"}
    assert dag.params.get_param("reason").has_value is False, "a rollback must not run without a reason"


def test_approval_between_gate_and_promote_when_switched_on(tmp_path, monkeypatch):
    import yaml
    from airflow.dag_processing.dagbag import DagBag

    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config["approval"] = {"required": True, "response_timeout_hours": 12, "assigned_users": ["lead"]}
    path = tmp_path / "approval.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("FRESHET_CONFIG", str(path))
    monkeypatch.setenv("FRESHET_DAG_ID_OVERRIDE", "freshet_with_approval")
    bag = DagBag(dag_folder=str(REPO / "dags" / "freshet_pipeline.py"))
    assert bag.import_errors == {}
    dag = bag.dags["freshet_with_approval"]
    approve = dag.get_task("approve")
    assert approve.__class__.__name__ == "ApprovalOperator"
    assert dag.get_task("gate").downstream_task_ids == {"approve"}
    assert approve.downstream_task_ids == {"promote"}
    assert dag.get_task("promote").upstream_task_ids == {"approve"}
    assert approve.defaults == ["Reject"] and approve.response_timeout.total_seconds() == 12 * 3600


def test_no_approval_task_in_the_demo(dagbag):
    bag, _ = dagbag
    assert "approve" not in bag.dags["freshet"].task_ids


def test_no_torch_or_pandas_imported_by_the_dag_file():
    import subprocess
    import sys

    code = ("import sys; sys.path[:0]=['plugins']; import runpy;"
            "[runpy.run_path(f'dags/{name}.py') for name in ('freshet_pipeline', 'freshet_watch', 'freshet_rollback', 'freshet_score', 'freshet_monitor')];"
            "heavy=[m for m in ('torch','pandas','transformers','mlflow','great_expectations') if m in sys.modules];"
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"DAG parse imported heavy modules: {result.stdout}"
