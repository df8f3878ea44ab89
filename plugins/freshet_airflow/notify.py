"""Webhook notifications: a small Airflow notifier that POSTs JSON about a run to a configured URL.

Used as the tasks' `on_failure_callback` (`failure_callbacks`, when `notify.on_failure`) and by the gate when it
rejects a candidate (`webhook`, when `notify.on_gate_reject`). The payload
names the DAG, run, task, try and reason, so the receiving end (chat, pager, ticket) needs no
access to Airflow to say what happened.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def run_identity(context: Mapping[str, Any]) -> dict[str, Any]:
    """dag/run/task/try/logical date from an Airflow context (any of them may be missing)."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    dag = context.get("dag")
    return {
        "dag_id": getattr(ti, "dag_id", None) or getattr(dag, "dag_id", None),
        "run_id": getattr(ti, "run_id", None) or getattr(dag_run, "run_id", None) or context.get("run_id"),
        "task_id": getattr(ti, "task_id", None),
        "try_number": getattr(ti, "try_number", None),
        "logical_date": _text(context.get("logical_date") or getattr(dag_run, "logical_date", None)),
    }


class WebhookNotifier(BaseNotifier):
    """POST `{"event", "pipeline", "dag_id", "run_id", "task_id", "try_number", "logical_date", "reason", ...}`.

    `reason` defaults to the exception in the context (a failure callback's context carries it).
    A webhook that does not answer 2xx raises (Airflow logs a failed callback; the task's own state
    is not changed by it).
    """

    template_fields = ("url", "reason")

    def __init__(self, url: str, *, event: str = "task_failed", pipeline: str | None = None, reason: str | None = None,
                 headers: Mapping[str, str] | None = None, timeout_s: float = 10.0,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.url = url
        self.event = event
        self.pipeline = pipeline
        self.reason = reason
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self.details = dict(details or {})

    def payload(self, context: Mapping[str, Any]) -> dict[str, Any]:
        exception = context.get("exception")
        reason = self.reason or (f"{type(exception).__name__}: {exception}" if exception is not None else None)
        return {"event": self.event, "pipeline": self.pipeline, **run_identity(context), "reason": reason,
                **self.details}

    def notify(self, context: Mapping[str, Any]) -> None:
        import httpx

        payload = self.payload(context)
        response = httpx.post(self.url, json=payload, headers=self.headers, timeout=self.timeout_s)
        if response.status_code >= 300:
            raise RuntimeError(f"webhook {self.url} answered HTTP {response.status_code} to {payload['event']} "
                               f"for {payload['dag_id']}/{payload['run_id']}/{payload['task_id']}")
        log.info("notified %s: %s %s/%s/%s", self.url, payload["event"], payload["dag_id"], payload["run_id"],
                 payload["task_id"])


def webhook(config, *, event: str = "task_failed", reason: str | None = None, details: dict | None = None):
    """The notifier of `config.notify`'s webhook for `event`."""
    return WebhookNotifier(config.notify.webhook_url, event=event, pipeline=config.name, reason=reason,
                           headers=config.notify.headers, timeout_s=config.notify.timeout_s, details=details)


def failure_callbacks(config) -> list:
    """A task's `on_failure_callback`: the webhook when the config asks to be told of failures, else none."""
    return [webhook(config)] if config.notify.webhook_url and config.notify.on_failure else []
