"""Webhook notifications against a real local receiver: direct, as a task's failure callback in a real
DAG run, and from the gate when it rejects a candidate."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest
import yaml

from freshet_airflow import control, dag_settings
from freshet_airflow.notify import WebhookNotifier
from tasks.checks import Check
from tasks.compress import CompressFacts
from tasks.config import GatePolicy
from tasks.gate_policy import final_verdict, judge_candidate, judge_compressed
from tests.airflow_support import WebhookReceiver, migrate_airflow_db


@pytest.fixture()
def receiver():
    with WebhookReceiver() as server:
        yield server


def write_config(tmp_path, webhook_url: str | None) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "name": "notified", "labels": ["a", "b"], "artifact_root": str(tmp_path / "artifacts"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
        "crawl": {"sources": [{"name": "s", "url": "https://example.org/feed/"}]},
        "notify": {"webhook_url": webhook_url, "headers": {"X-Token": "t0k"}},
    }))
    dag_settings.pipeline_config.cache_clear()
    return str(path)


def test_notifier_posts_run_identity_and_reason(receiver):
    ti = SimpleNamespace(dag_id="freshet", run_id="scheduled__2026-11-02", task_id="crawl", try_number=2)
    notifier = WebhookNotifier(receiver.url, pipeline="demo", headers={"X-Token": "t0k"})
    notifier({"ti": ti, "exception": RuntimeError("source http://x/ answered HTTP 503"),
              "logical_date": dt.datetime(2026, 11, 2, tzinfo=dt.UTC)})
    (payload,) = receiver.events("task_failed")
    assert payload == {"event": "task_failed", "pipeline": "demo", "dag_id": "freshet", "run_id": "scheduled__2026-11-02",
                       "task_id": "crawl", "try_number": 2, "logical_date": "2026-11-02 00:00:00+00:00",
                       "reason": "RuntimeError: source http://x/ answered HTTP 503"}
    assert receiver.received[0]["headers"]["X-Token"] == "t0k"


def test_notifier_raises_when_the_webhook_refuses(receiver):
    receiver.status = 500
    with pytest.raises(RuntimeError, match="answered HTTP 500"):
        WebhookNotifier(receiver.url)({"ti": SimpleNamespace(dag_id="d", run_id="r", task_id="t", try_number=1)})


def _compress_manifest(frozen_macro_f1: float) -> dict:
    """A compress manifest whose gate verdict is built by the gate policy itself, as compress builds it:
    the candidate judged against two floors, with an int8 variant's re-gate listed beside it."""
    policy = GatePolicy(floors={"frozen.macro_f1": 0.5, "fresh.macro_f1": 0.5}, max_compressed_drop=0.03)
    candidate = {"frozen": {"macro_f1": frozen_macro_f1, "rows": 200}, "fresh": {"macro_f1": 0.61, "rows": 40}}
    compressed = {"frozen": {"macro_f1": frozen_macro_f1 - 0.01, "rows": 200}}
    verdict = judge_candidate(policy, candidate, champion=None)
    regate = judge_compressed(policy, compressed, candidate, "int8")
    gate = final_verdict(verdict.facts(), regate.checks, serving_variant="int8")
    facts = CompressFacts(gate=gate, serving_variant="int8", serving_artifact=None, serving_model=None, variants={},
                          champion_version=None)
    return {"step": "compress", "facts": facts.dump()}


def test_gate_rejection_notifies_its_failed_checks_and_still_short_circuits(tmp_path, receiver):
    config_path = write_config(tmp_path, receiver.url)
    ti = SimpleNamespace(dag_id="freshet", run_id="scheduled__2026-11-02", task_id="gate", try_number=1)
    rejected = _compress_manifest(frozen_macro_f1=0.21)
    assert control.gate_outcome(rejected, config_path, ti=ti) is False
    (rejection,) = receiver.events("gate_rejected")
    assert rejection["run_id"] == "scheduled__2026-11-02" and rejection["task_id"] == "gate"
    assert rejection["reason"] == "; ".join(CompressFacts.model_validate(rejected["facts"]).gate.reasons)
    assert "frozen.macro_f1" in rejection["reason"] and "0.21" in rejection["reason"]
    (failed,) = rejection["checks"]
    assert Check.model_validate(failed) == Check(
        name="floor:frozen.macro_f1", value=0.21, bound=0.5, comparison=">=", verdict="failed",
        detail="candidate frozen.macro_f1 floor: 0.2100 violates >= 0.5000")
    assert control.gate_outcome(_compress_manifest(frozen_macro_f1=0.72), config_path, ti=ti) is True
    assert len(receiver.received) == 1, "a passing gate must not notify"


def test_dead_webhook_does_not_turn_a_rejection_into_a_failure(tmp_path):
    config_path = write_config(tmp_path, "http://127.0.0.1:9/unreachable")
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="gate", try_number=1)
    assert control.gate_outcome(_compress_manifest(frozen_macro_f1=0.21), config_path, ti=ti) is False


def test_failed_task_notifies_from_a_real_dag_run(tmp_path, receiver, monkeypatch):
    """The rollback DAG, run for real with no champion registered: its task fails and the failure
    callback posts the run's identity and the step's error to the webhook."""
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import REPO

    migrate_airflow_db()
    monkeypatch.setenv("FRESHET_CONFIG", write_config(tmp_path, receiver.url))
    dag = DagBag(dag_folder=str(REPO / "dags" / "freshet_rollback.py")).dags["freshet_rollback"]
    run = dag.test(logical_date=dt.datetime(2026, 11, 3, tzinfo=dt.UTC),
                   run_conf={"reason": "bad outputs in prod", "requested_by": "oncall"})
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {"rollback": "failed"}
    (failure,) = receiver.events("task_failed")
    assert failure["dag_id"] == "freshet_rollback" and failure["task_id"] == "rollback"
    assert failure["run_id"] == run.run_id and failure["pipeline"] == "notified"
    assert failure["reason"].startswith("StepError: rollback: ") and "needs both a champion and a previous" in failure["reason"]


def test_no_webhook_configured_means_no_callbacks(tmp_path):
    settings = dag_settings.pipeline_dag_settings(write_config(tmp_path, None))
    assert settings["default_args"]["on_failure_callback"] == []
