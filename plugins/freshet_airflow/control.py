"""Control tasks: ShortCircuits over a step's manifest facts (new data? train? gate passed?), the optional
human approval, the source watcher, the rollback, and the Asset updates of batch scoring (the prediction
log) and of the monitor (production drift), each emitted only when there is something to tell. They run in the worker and only read manifests
or call small functions of `tasks`; the steps themselves run where `runner.mode` says.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from freshet_airflow.assets import prediction_log_asset, production_drift_asset, source_asset
from freshet_airflow.dag_settings import pipeline_config, retry_policy
from freshet_airflow.notify import failure_callbacks, webhook
from freshet_airflow.operators import parse_manifest
from tasks.checks import failed
from tasks.decide import DecideFacts
from tasks.score import ScoreFacts
from tasks.store import ArtifactStore

if TYPE_CHECKING:
    from tasks.gate_policy import GateFacts, Verdict
    from tasks.monitor import MonitorFacts

log = logging.getLogger(__name__)


def _short_circuit(task_id: str, decide: Callable[..., bool], config_path: str, **operator_kwargs: Any) -> BaseOperator:
    """A ShortCircuit whose callable reads a step's manifest: False skips everything downstream, green."""
    from airflow.providers.standard.operators.python import ShortCircuitOperator

    return ShortCircuitOperator(task_id=task_id, python_callable=decide, op_kwargs={"config_path": config_path},
                                retries=0, **operator_kwargs)


def step_manifest(context: Any, step: str) -> dict[str, Any]:
    """This run's manifest of `step` from its task's XCom (task id = step name)."""
    return xcom_manifest(context["ti"].xcom_pull(task_ids=step), step)


def xcom_manifest(output: dict[str, Any] | str, step: str) -> dict[str, Any]:
    """A step's manifest from its XCom: a dict, a JSON string, or the step's stdout (last manifest line)."""
    if isinstance(output, dict):
        return output
    return json.loads(output) if output.lstrip().startswith("{") else parse_manifest(output, step)


# ------------------------------------------------------------------------------------- new data?

def crawl_found_data(manifest: dict[str, Any] | str, *, forced: bool = False) -> tuple[bool, str]:
    """(go on?, why) from the crawl manifest: a day with nothing new is a normal day, not a failure. A forced run
    goes on anyway: the retry after a fix trains the rows that already wait (decide counts them)."""
    manifest = xcom_manifest(manifest, "crawl")
    metrics = manifest["metrics"]
    new, quarantined = int(metrics.get("rows_new") or 0), int(metrics.get("rows_quarantined") or 0)
    if new or quarantined:
        return True, f"{new} new rows ({quarantined} quarantined by the crawl) up to {manifest.get('logical_date')}"
    found = (f"nothing new up to {manifest.get('logical_date')}: {metrics.get('pages_fetched', 0)} pages fetched,"
             f" {metrics.get('pages_not_modified', 0)} not modified, {metrics.get('errors', 0)} errors")
    if forced:
        return True, found + "; going on because the run is forced (force_training): the waiting rows go to decide"
    return False, found + "; the run ends here"


def _new_data(config_path: str, **context: Any) -> bool:
    forced = bool((context.get("params") or {}).get("force_training"))
    go_on, reason = crawl_found_data(step_manifest(context, "crawl"), forced=forced)
    log.info("new data: %s", reason)
    context["ti"].xcom_push(key="new_data", value={"ingest": go_on, "reason": reason})
    return go_on


def new_data(config_path: str, **operator_kwargs: Any) -> BaseOperator:
    """ShortCircuit after crawl: a run whose crawl found nothing ends there, green, with the reason logged (unless
    the run is forced)."""
    return _short_circuit("new_data", _new_data, config_path, **operator_kwargs)


# --------------------------------------------------------------------------------- training decision

def training_decided(manifest: dict[str, Any] | str) -> tuple[bool, str]:
    """(train?, why) from the decide manifest's facts."""
    facts = DecideFacts.of(xcom_manifest(manifest, "decide"))
    return facts.train, facts.reason


def _should_train(config_path: str, **context: Any) -> bool:
    train, reason = training_decided(step_manifest(context, "decide"))
    (log.info if train else log.warning)("decide: %s: %s", "TRAIN" if train else "SKIP training", reason)
    return train


def should_train(config_path: str, **operator_kwargs: Any) -> BaseOperator:
    """ShortCircuit after decide: train only on enough new rows, drift, no champion yet, or `force_training`."""
    return _short_circuit("should_train", _should_train, config_path, **operator_kwargs)


# -------------------------------------------------------------------------------------------- gate

def gate_facts(manifest: dict[str, Any] | str) -> GateFacts:
    """The gate verdict in the compress manifest (gate_policy.final_verdict), read through the type that wrote
    it, so a check's verdict is one of that type's words, not a string this module guesses."""
    # lazy: tasks.compress brings torch (6 s measured) into every DAG parse; this runs in the task.
    from tasks.compress import CompressFacts

    return CompressFacts.of(xcom_manifest(manifest, "compress")).gate


def gate_verdict(manifest: dict[str, Any] | str) -> Verdict:
    return gate_facts(manifest).verdict()


def gate_passed(manifest: dict[str, Any] | str) -> bool:
    """ShortCircuit callable: True lets promotion run; False skips it and the log says why."""
    facts = gate_facts(manifest)
    verdict = facts.verdict()
    if verdict.passed:
        log.info("gate PASSED (serving variant %s); promoting", facts.serving_variant)
    else:
        log.warning("gate REJECTED the candidate; promotion skipped. Reasons: %s", "; ".join(verdict.reasons))
    for check in verdict.checks:
        log.info("  %-45s %-8s %s", check.name, check.verdict, check.detail)
    return verdict.passed


def gate_outcome(manifest: dict[str, Any] | str, config_path: str | None = None, **context: Any) -> bool:
    """gate_passed, and a rejection notified by webhook, with its failed checks, when the config asks for it."""
    passed = gate_passed(manifest)
    config = pipeline_config(config_path) if config_path else None
    if not passed and config is not None and config.notify.webhook_url and config.notify.on_gate_rejection:
        verdict = gate_verdict(manifest)
        # Every failed check, a compressed variant's re-gate included: it does not reject, but it is news.
        notifier = webhook(config, event="gate_rejected", reason="; ".join(verdict.reasons),
                           details={"checks": [check.model_dump() for check in failed(verdict.checks)]})
        try:
            notifier(context)
        except Exception:  # a dead webhook must not turn a normal rejection into a failed run
            log.exception("gate: the rejection notice to %s failed", config.notify.webhook_url)
    return passed


def _gate(config_path: str, **context: Any) -> bool:
    return gate_outcome(step_manifest(context, "compress"), config_path, **context)


def gate(config_path: str, **operator_kwargs: Any) -> BaseOperator:
    """ShortCircuit on the gate verdict in the compress manifest; a rejection is notified (config.notify)."""
    return _short_circuit("gate", _gate, config_path, **operator_kwargs)


# ------------------------------------------------------------------------------------ human approval

def approve(config_path: str, **operator_kwargs: Any) -> BaseOperator | None:
    """An ApprovalOperator between gate and promote when `approval.required`, else None (nothing to chain)."""
    config = pipeline_config(config_path)
    settings = config.approval
    if not settings.required:
        return None
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    timeout = settings.response_timeout_hours
    return ApprovalOperator(
        task_id="approve",
        subject=f"Promote {config.mlflow.model_name} version "
                "{{ ti.xcom_pull(task_ids='register')['facts']['version'] }} to champion?",
        body=("The candidate passed the gate in run `{{ run_id }}`. Gate checks:\n\n"
              "{% for check in ti.xcom_pull(task_ids='compress')['facts']['gate']['checks'] %}"
              "- {{ check['name'] }}: {{ check['verdict'] }} ({{ check['detail'] }})\n{% endfor %}"),
        defaults=settings.default if timeout else None,
        response_timeout=timedelta(hours=timeout) if timeout else None,
        assigned_users=[{"id": user, "name": user} for user in settings.assigned_users] or None,
        retries=0,
        **operator_kwargs,
    )


# ------------------------------------------------------------------------------------ source watcher

def _watch(config_path: str, **context: Any) -> dict[str, list[str]]:
    from airflow.sdk.exceptions import AirflowSkipException

    from tasks.sources.watch import pending_pages  # lazy: it brings the crawl's HTTP stack (0.6 s) into DAG parsing

    config = pipeline_config(config_path)
    # Pages dated up to today: a source may list future days (the demo site does), which no run would crawl yet.
    pending = pending_pages(config, ArtifactStore(config.artifact_root), until=dt.datetime.now(dt.UTC).date())
    if not pending:
        # Skipped, so no Asset event: the pipeline keeps its daily slot.
        raise AirflowSkipException("no new pages at any source")
    pages = {name: len(urls) for name, urls in pending.items()}
    context["outlet_events"][source_asset(config)].extra = {"pages": pages}
    return pending


def watch(config_path: str, **operator_kwargs: Any) -> BaseOperator:
    """Poll the sources' indexes; on a page the crawler has not fetched, update the source Asset."""
    from airflow.providers.standard.operators.python import PythonOperator

    config = pipeline_config(config_path)
    for key, value in retry_policy(config, "crawl").items():
        operator_kwargs.setdefault(key, value)
    return PythonOperator(task_id="watch", python_callable=_watch, op_kwargs={"config_path": config_path},
                          outlets=[source_asset(config)], **operator_kwargs)


# ------------------------------------------------------------------------- production: score, monitor

def scored_rows(manifest: dict[str, Any] | str) -> tuple[int, str]:
    """(rows filed in the prediction log, why) from the score manifest."""
    manifest = xcom_manifest(manifest, "score")
    return int(manifest["metrics"].get("rows") or 0), ScoreFacts.of(manifest).reason


def _predictions_scored(config_path: str, **context: Any) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowSkipException

    config = pipeline_config(config_path)
    manifest = step_manifest(context, "score")
    rows, reason = scored_rows(manifest)
    if not rows or not config.score.log_predictions:
        # Skipped, so no Asset event: the monitor keeps its daily slot.
        raise AirflowSkipException(f"nothing filed in the prediction log: {reason}")
    facts = ScoreFacts.of(manifest)
    extra = {"rows": rows, "run_id": manifest["run_id"], "model_version": facts.model_version,
             "shadow_version": facts.shadow_version, "endpoint": "batch"}
    context["outlet_events"][prediction_log_asset(config)].extra = extra
    log.info("prediction log: %s", reason)
    return extra


def predictions_scored(config_path: str, **operator_kwargs: Any) -> BaseOperator:
    """After `score`: updates the prediction log's Asset (which starts `freshet_monitor`) when rows were scored."""
    from airflow.providers.standard.operators.python import PythonOperator

    config = pipeline_config(config_path)
    return PythonOperator(task_id="predictions_scored", python_callable=_predictions_scored, retries=0,
                          op_kwargs={"config_path": config_path}, outlets=[prediction_log_asset(config)],
                          **operator_kwargs)


def monitor_facts(manifest: dict[str, Any] | str) -> MonitorFacts:
    # lazy: tasks.monitor brings the scorer (blend, scikit-learn, torch; 1.3-1.5 s measured) into
    # every DAG parse; this runs in the task.
    from tasks.monitor import MonitorFacts

    return MonitorFacts.of(xcom_manifest(manifest, "monitor"))


def breach_of(manifest: dict[str, Any] | str) -> dict[str, Any] | None:
    """The breach the monitor emitted (None: none, or one held back by the cooldown)."""
    facts = monitor_facts(manifest)
    return facts.breach if facts.breach_emitted else None


def _production_drift(config_path: str, **context: Any) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowSkipException

    config = pipeline_config(config_path)
    manifest = step_manifest(context, "monitor")
    breach = breach_of(manifest)
    if breach is None:
        raise AirflowSkipException(f"no breach emitted: {monitor_facts(manifest).verdict}")
    extra = {key: breach.get(key) for key in ("id", "logical_date", "reasons", "versions", "champion")}
    context["outlet_events"][production_drift_asset(config)].extra = extra
    log.warning("production drift: breach %s: %s", breach["id"], "; ".join(breach["reasons"]))
    return extra


def production_drift(config_path: str, **operator_kwargs: Any) -> BaseOperator:
    """After `monitor`: on an emitted breach, updates the production-drift Asset (which starts the pipeline);
    otherwise skips, so no event."""
    from airflow.providers.standard.operators.python import PythonOperator

    config = pipeline_config(config_path)
    return PythonOperator(task_id="production_drift", python_callable=_production_drift, retries=0,
                          op_kwargs={"config_path": config_path}, outlets=[production_drift_asset(config)],
                          **operator_kwargs)


# ------------------------------------------------------------------------------------------ rollback

def _rollback(config_path: str, **context: Any) -> dict[str, str]:
    # lazy: tasks.promote brings register's and compress's torch (5.5 s measured) into DAG parsing.
    from tasks.promote import rollback as move_back

    params, ti = context["params"], context["ti"]
    who = params.get("requested_by") or getattr(context["dag_run"], "triggering_user_name", None) or "unknown"
    # The demoted version's audit tags name this Airflow run, as our step operators' runs do.
    identity = {"dag_id": ti.dag_id, "dag_run_id": ti.run_id, "try_number": str(ti.try_number)}
    moved = move_back(pipeline_config(config_path), who=who, why=params["reason"],
                      expected_champion=params.get("expected_champion") or None, identity=identity)
    log.info("rollback: champion -> version %s, version %s demoted, by %s: %s", moved["champion"], moved["demoted"],
             who, params["reason"])
    return moved


def rollback(config_path: str, **operator_kwargs: Any) -> BaseOperator:
    """Move `champion` back to `previous` (tasks.promote.rollback, as `freshet rollback`); who/why from params."""
    from airflow.providers.standard.operators.python import PythonOperator

    config = pipeline_config(config_path)
    # No retries: a half-applied rollback retried would demote the restored version too; a person re-triggers.
    return PythonOperator(task_id="rollback", retries=0, python_callable=_rollback,
                          op_kwargs={"config_path": config_path},
                          on_failure_callback=failure_callbacks(config), **operator_kwargs)


def rollback_params() -> dict[str, Any]:
    from airflow.sdk import Param

    return {"reason": Param(type="string", minLength=3, description="why: recorded on the demoted version"),
            "requested_by": Param("", type="string", description="who asks (default: the triggering user)"),
            "expected_champion": Param("", type="string",
                                       description="the champion version you mean to roll back (refuses if it moved)")}
