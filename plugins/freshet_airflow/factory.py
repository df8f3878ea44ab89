"""The step-runner factory: one `step(...)` call per task, the runner chosen by config.

`local` runs the step in the worker (FreshetStepOperator / DDPTrainOperator), `docker` runs our
image with DockerOperator, `kubernetes` runs it as a pod with KubernetesPodOperator. The command
is `python -m tasks.<step> ...` (or torchrun for training) in all three; the manifest comes back
the way each operator expects: stdout's last line, or /airflow/xcom/return.json in a pod.

Also here, so DAG files stay one call per task: the DAG's schedule and run settings from the config
(daily or on new source pages, an Airflow Asset), the training decision, the gate with its rejection
notice, the optional human approval, the source watcher and the rollback task.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from freshet_airflow.operators import (
    AIRFLOW_IDENTITY_ENV,
    DDPTrainOperator,
    FreshetStepOperator,
    parse_manifest,
    step_arguments,
    torchrun_arguments,
)

log = logging.getLogger(__name__)
POD_XCOM_FILE = "/airflow/xcom/return.json"


@functools.lru_cache(maxsize=8)
def pipeline_config(config_path: str):
    from tasks.config import load_config

    return load_config(config_path)


def _container_operator(config, task_id: str, command: list[str], *, gpus: int = 0, **kwargs: Any):
    runner = config.runner
    environment = {**AIRFLOW_IDENTITY_ENV, **runner.env, "FRESHET_THREADS_PER_RANK": "auto"}
    if runner.mode == "docker":
        from airflow.providers.docker.operators.docker import DockerOperator
        from docker.types import DeviceRequest

        return DockerOperator(
            task_id=task_id, image=runner.image, command=command, environment=environment,
            docker_url=runner.docker_url, network_mode=runner.network_mode, auto_remove="success",
            mount_tmp_dir=False, do_xcom_push=True, xcom_all=False,
            device_requests=[DeviceRequest(count=gpus, capabilities=[["gpu"]])] if gpus else None,
            **kwargs,
        )
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    resources = k8s.V1ResourceRequirements(limits={"nvidia.com/gpu": str(gpus)}) if gpus else None
    return KubernetesPodOperator(
        task_id=task_id, name=f"freshet-{task_id}", namespace=runner.namespace, image=runner.image,
        cmds=[command[0]], arguments=[*command[1:], "--xcom-file", POD_XCOM_FILE],
        env_vars=environment, do_xcom_push=True, get_logs=True, container_resources=resources,
        on_finish_action="delete_pod", **kwargs,
    )


def step(name: str, config_path: str, *, inputs: Sequence[str] = (), overrides: Sequence[str] = (),
         **operator_kwargs: Any):
    """The task for step `name`, run the way the pipeline config's `runner.mode` says."""
    config = pipeline_config(config_path)
    for key, value in retry_policy(config, name).items():
        operator_kwargs.setdefault(key, value)
    if config.runner.mode == "local":
        return FreshetStepOperator(task_id=name, step=name, arguments=step_arguments(name, config_path, inputs, overrides),
                                   env=config.runner.env, **operator_kwargs)
    command = ["python", "-m", f"tasks.{name}",
               *step_arguments(name, config.runner.container_config_path, inputs, overrides)]
    return _container_operator(config, name, command, **operator_kwargs)


def train_step(config_path: str, *, inputs: Sequence[str] = (), overrides: Sequence[str] = (), **operator_kwargs: Any):
    """The DDP training task: torchrun in the worker, in our image, or in a GPU pod."""
    config = pipeline_config(config_path)
    settings = config.train
    if config.runner.train_queue:
        operator_kwargs.setdefault("queue", config.runner.train_queue)
    if config.runner.train_executor:
        operator_kwargs.setdefault("executor", config.runner.train_executor)
    if config.runner.mode == "local":
        return DDPTrainOperator(
            task_id="train", arguments=step_arguments("train", config_path, inputs, overrides), env=config.runner.env,
            nproc_per_node=settings.nproc_per_node, cpu_processes=settings.cpu_processes, nnodes=settings.nnodes,
            rdzv_endpoint=settings.rdzv_endpoint, max_restarts=settings.max_restarts, **operator_kwargs,
        )
    if config.runner.mode == "kubernetes" and settings.nnodes > 1:
        # One pod per node, rendezvous managed by the Kubeflow training operator (a PyTorchJob).
        import yaml

        from freshet_airflow.kubeflow import PyTorchJobOperator, render_pytorchjob

        manifest = render_pytorchjob(config, inputs=inputs, overrides=overrides)
        return PyTorchJobOperator(task_id="train", yaml_conf=yaml.safe_dump(manifest, sort_keys=False),
                                  namespace=config.runner.namespace, **operator_kwargs)
    gpus = config.runner.gpus
    nproc = ("gpu" if gpus else settings.cpu_processes) if settings.nproc_per_node == "auto" else settings.nproc_per_node
    command = ["python", *torchrun_arguments(nproc, settings.nnodes, settings.rdzv_endpoint, settings.max_restarts),
               "-m", "tasks.train", *step_arguments("train", config.runner.container_config_path, inputs, overrides)]
    return _container_operator(config, "train", command, gpus=gpus, **operator_kwargs)


def xcom_manifest(output: dict[str, Any] | str, step: str) -> dict[str, Any]:
    """A step's manifest from its XCom: a dict, a JSON string, or the step's stdout (last manifest line)."""
    if isinstance(output, dict):
        return output
    return json.loads(output) if output.lstrip().startswith("{") else parse_manifest(output, step)


def gate_passed(manifest: dict[str, Any] | str) -> bool:
    """ShortCircuit callable: True lets promotion run; False skips it and the log says why."""
    gate = xcom_manifest(manifest, "compress")["facts"]["gate"]
    if gate["passed"]:
        log.info("gate PASSED (serving variant %s); promoting", gate.get("serving_variant"))
    else:
        log.warning("gate REJECTED the candidate; promotion skipped. Reasons: %s", "; ".join(gate["reasons"]))
    for check in gate["checks"]:
        log.info("  %-45s %-8s %s", check["name"], check["verdict"], check["detail"])
    return bool(gate["passed"])


def _gate(manifest: dict[str, Any] | str, config_path: str | None = None, **context: Any) -> bool:
    passed = gate_passed(manifest)
    config = pipeline_config(config_path) if config_path else None
    if not passed and config is not None and config.notify.webhook_url and config.notify.on_gate_rejection:
        facts = xcom_manifest(manifest, "compress")["facts"]
        notifier = webhook(config, event="gate_rejected", reason="; ".join(facts["gate"]["reasons"]),
                           details={"checks": [item for item in facts["gate"]["checks"] if item["verdict"] == "failed"]})
        try:
            notifier(context)
        except Exception:  # a dead webhook must not turn a normal rejection into a failed run
            log.exception("gate: the rejection notice to %s failed", config.notify.webhook_url)
    return passed


def gate(compress_task, config_path: str | None = None, **operator_kwargs: Any):
    """ShortCircuit on the gate verdict in the compress manifest; a rejection is notified (config.notify)."""
    from airflow.providers.standard.operators.python import ShortCircuitOperator

    return ShortCircuitOperator(task_id="gate", python_callable=_gate, op_args=[compress_task.output],
                                op_kwargs={"config_path": config_path}, retries=0, **operator_kwargs)


# ------------------------------------------------------------------------ schedule and run settings

TRANSIENT_STEPS = ("crawl", "register", "promote")  # network calls: a retry can succeed


def retry_policy(config, name: str) -> dict[str, Any]:
    """Exponential backoff for steps that talk to the network; none where the same inputs fail the same way."""
    settings = config.schedule
    if name not in TRANSIENT_STEPS:
        return {"retries": 0}
    return {"retries": settings.retries, "retry_delay": timedelta(seconds=settings.retry_delay_s),
            "retry_exponential_backoff": True, "max_retry_delay": timedelta(seconds=settings.max_retry_delay_s)}


def source_asset(config):
    """The Asset the watcher updates when a source lists pages the crawler has not fetched yet."""
    from airflow.sdk import Asset

    return Asset(name=f"freshet.{config.name}.source_pages", group="freshet",
                 extra={"sources": [source.url for source in config.crawl.sources]})


def webhook(config, *, event: str = "task_failed", reason: str | None = None, details: dict | None = None):
    from freshet_airflow.notify import WebhookNotifier

    return WebhookNotifier(config.notify.webhook_url, event=event, pipeline=config.name, reason=reason,
                           headers=config.notify.headers, timeout_s=config.notify.timeout_s, details=details)


def failure_callbacks(config) -> list:
    return [webhook(config)] if config.notify.webhook_url and config.notify.on_failure else []


def pipeline_dag_settings(config_path: str) -> dict[str, Any]:
    """DAG(...) keyword arguments from the config: schedule (daily, or also on new source pages), catch-up,
    one active run, retries off by default (steps opt in), failure notifications, the `force_training` param."""
    import pendulum
    from airflow.sdk import AssetOrTimeSchedule, CronDataIntervalTimetable, Param

    config = pipeline_config(config_path)
    settings = config.schedule
    # A data-interval timetable: the run for day D starts after D ends and crawls pages dated up to D.
    timetable = CronDataIntervalTimetable(settings.cron, timezone="UTC")
    schedule = (AssetOrTimeSchedule(timetable=timetable, assets=[source_asset(config)]) if settings.watch_source
                else timetable)
    start = settings.start_date
    return {
        "schedule": schedule,
        "start_date": pendulum.datetime(start.year, start.month, start.day, tz="UTC"),
        "catchup": settings.catchup,
        "max_active_runs": settings.max_active_runs,
        "default_args": {"retries": 0, "on_failure_callback": failure_callbacks(config)},
        "params": {"force_training": Param(False, type="boolean",
                                           description="train even without enough new rows or drift")},
    }


def training_settings(config_path: str) -> dict[str, Any]:
    """Operator kwargs for the training task: the pool that serialises GPU work, resume-friendly retries."""
    settings = pipeline_config(config_path).schedule
    kwargs: dict[str, Any] = {"retries": settings.train_retries,
                              "retry_delay": timedelta(seconds=settings.retry_delay_s)}
    if settings.training_pool:
        kwargs.update(pool=settings.training_pool, pool_slots=1)
    return kwargs


# ------------------------------------------------------------------------------------- new data?

def crawl_found_data(manifest: dict[str, Any] | str) -> tuple[bool, str]:
    """(go on?, why) from the crawl manifest: a day with nothing new is a normal day, not a failure."""
    manifest = xcom_manifest(manifest, "crawl")
    metrics = manifest["metrics"]
    new, quarantined = int(metrics.get("rows_new") or 0), int(metrics.get("rows_quarantined") or 0)
    if new or quarantined:
        return True, f"{new} new rows ({quarantined} quarantined by the crawl) up to {manifest.get('logical_date')}"
    return False, (f"nothing new up to {manifest.get('logical_date')}: {metrics.get('pages_fetched', 0)} pages fetched,"
                   f" {metrics.get('pages_not_modified', 0)} not modified, {metrics.get('errors', 0)} errors;"
                   " the run ends here")


def _new_data(manifest: dict[str, Any] | str, **context: Any) -> bool:
    go_on, reason = crawl_found_data(manifest)
    log.info("new data: %s", reason)
    context["ti"].xcom_push(key="new_data", value={"ingest": go_on, "reason": reason})
    return go_on


def new_data(crawl_task, **operator_kwargs: Any):
    """ShortCircuit after crawl: a run whose crawl found nothing ends there, green, with the reason logged."""
    from airflow.providers.standard.operators.python import ShortCircuitOperator

    return ShortCircuitOperator(task_id="new_data", python_callable=_new_data, op_args=[crawl_task.output],
                                retries=0, **operator_kwargs)


# --------------------------------------------------------------------------------- training decision

def data_day(context: Any) -> str:
    """The run's data day: its logical date, or the day it runs for an asset-triggered run (no logical date)."""
    if context.get("ds"):
        return context["ds"]
    run_after = context["dag_run"].run_after
    return (run_after or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%d")


def _decide(config_path: str, **context: Any) -> bool:
    from tasks import decide as decision
    from tasks.contract import StepError, read_manifest
    from tasks.store import ArtifactStore

    config = pipeline_config(config_path)
    store = ArtifactStore(config.artifact_root)
    run_id = context["run_id"]
    validation = read_manifest(store, run_id, "validate")
    if validation is None:
        raise StepError(f"decide: no validate manifest for run {run_id!r} at "
                        f"{store.step_uri(run_id, 'validate', 'manifest.json')}")
    force = bool((context.get("params") or {}).get("force_training", False))
    manifest = decision.run(config, {"validate": validation}, run_id=run_id, store=store,
                            logical_date=data_day(context), force=force)
    facts = manifest.facts
    context["ti"].xcom_push(key="decision", value={
        "train": facts["train"], "reason": facts["reason"],
        "rows_since_last_training": manifest.metrics["rows_since_last_training"]})
    return bool(facts["train"])


def decide(config_path: str, **operator_kwargs: Any):
    """ShortCircuit: train only on enough new rows, drift, no champion yet, or `force_training`."""
    from airflow.providers.standard.operators.python import ShortCircuitOperator

    return ShortCircuitOperator(task_id="decide", python_callable=_decide, op_kwargs={"config_path": config_path},
                                retries=0, **operator_kwargs)


# ------------------------------------------------------------------------------------ human approval

def approve(config_path: str, **operator_kwargs: Any) -> list:
    """[ApprovalOperator] between gate and promote when `approval.required`, else [] (nothing to chain)."""
    config = pipeline_config(config_path)
    settings = config.approval
    if not settings.required:
        return []
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    timeout = settings.response_timeout_hours
    return [ApprovalOperator(
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
    )]


# ------------------------------------------------------------------------------------ source watcher

def _watch(config_path: str, **context: Any) -> dict[str, list[str]]:
    from airflow.sdk.exceptions import AirflowSkipException

    from tasks.store import ArtifactStore
    from tasks.watch import pending_pages

    config = pipeline_config(config_path)
    # Pages dated up to today: a source may list future days (the demo site does), which no run would crawl yet.
    pending = pending_pages(config, ArtifactStore(config.artifact_root), until=dt.datetime.now(dt.timezone.utc).date())
    if not pending:
        # Skipped, so no Asset event: the pipeline keeps its daily slot.
        raise AirflowSkipException("no new pages at any source")
    pages = {name: len(urls) for name, urls in pending.items()}
    context["outlet_events"][source_asset(config)].extra = {"pages": pages}
    return pending


def watch(config_path: str, **operator_kwargs: Any):
    """Poll the sources' indexes; on a page the crawler has not fetched, update the source Asset."""
    from airflow.providers.standard.operators.python import PythonOperator

    config = pipeline_config(config_path)
    for key, value in retry_policy(config, "crawl").items():
        operator_kwargs.setdefault(key, value)
    return PythonOperator(task_id="watch", python_callable=_watch, op_kwargs={"config_path": config_path},
                          outlets=[source_asset(config)], **operator_kwargs)


# ------------------------------------------------------------------------------------------ rollback

def _rollback(config_path: str, **context: Any) -> dict[str, str]:
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


def rollback(config_path: str, **operator_kwargs: Any):
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
