"""freshet's Airflow side: every DAG task is `task(name, config_path)`; the pieces live by what they do.

- `runners`: one task per step (`tasks.pipeline`), run locally, in our image or in a pod; training under torchrun.
- `control`: ShortCircuits over a step's manifest (new_data, should_train, gate), approval, watch, rollback, and
  the Asset updates after batch scoring (predictions_scored) and the monitor (production_drift).
- `dag_settings`: the config path, each DAG's schedule and run settings, retries, the training pool.
- `assets`: the Assets the DAGs update and are scheduled on (source pages, prediction log, production drift).
- `notify`: the webhook notifier, for failures and gate rejections.
- `operators`, `kubeflow`: the operators the runners use.

Airflow adds `plugins/` to `sys.path`, so DAG files import `freshet_airflow` directly; the package
is also installed with the project (pyproject) for tests and containers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from airflow.sdk import BaseOperator

from freshet_airflow import control
from freshet_airflow.dag_settings import (
    config_path,
    pipeline_dag_settings,
    pipeline_schedule,
    production_dag_settings,
    production_schedules,
)
from freshet_airflow.runners import step
from tasks.pipeline import PIPELINE_STEP_NAMES, STEP_NAMES

CONTROL_TASKS: dict[str, Callable[..., BaseOperator | None]] = {
    "new_data": control.new_data,
    "should_train": control.should_train,
    "gate": control.gate,
    "approve": control.approve,
    "watch": control.watch,
    "rollback": control.rollback,
    "predictions_scored": control.predictions_scored,
    "production_drift": control.production_drift,
}
# The `freshet` DAG's control tasks, by the step they follow: `new_data` ends a run whose crawl found nothing,
# `should_train` one that decide does not train, `gate` (and `approve`, when required) guards promote.
CONTROL_AFTER: dict[str, tuple[str, ...]] = {"crawl": ("new_data",), "decide": ("should_train",),
                                             "register": ("gate", "approve")}
# The `freshet` DAG's tasks in order: the steps in tasks.pipeline's order, each followed by its control tasks.
PIPELINE_TASKS: tuple[str, ...] = tuple(name for step_name in PIPELINE_STEP_NAMES
                                        for name in (step_name, *CONTROL_AFTER.get(step_name, ())))


def task(name: str, config_path: str, **operator_kwargs: Any) -> BaseOperator | None:
    """The task `name`: a step of tasks.pipeline or a control task; None for one the config switches off."""
    if name in STEP_NAMES:
        return step(name, config_path, **operator_kwargs)
    if name in CONTROL_TASKS:
        return CONTROL_TASKS[name](config_path, **operator_kwargs)
    raise KeyError(f"unknown task {name!r}: steps {', '.join(STEP_NAMES)}; control tasks {', '.join(CONTROL_TASKS)}")


def tasks(config_path: str, names: Iterable[str]) -> list[BaseOperator]:
    """The tasks in order, leaving out those the config switches off (approval when not required)."""
    return [built for name in names if (built := task(name, config_path)) is not None]


__all__ = ["CONTROL_TASKS", "PIPELINE_TASKS", "config_path", "pipeline_dag_settings", "pipeline_schedule",
           "production_dag_settings", "production_schedules", "task", "tasks"]
