"""The DAGs' settings from the pipeline config: where the config is, each DAG's schedule (daily, or also on new
source pages and production drift, Airflow Assets) and run settings, the steps' retries and the training pool."""

from __future__ import annotations

import functools
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronDataIntervalTimetable, Param

from freshet_airflow.assets import prediction_log_asset, production_drift_asset, source_asset
from freshet_airflow.notify import failure_callbacks
from tasks.config import PipelineConfig, load_config
from tasks.pipeline import step as pipeline_step

REPO = Path(__file__).resolve().parents[2]


def config_path() -> str:
    """The pipeline config every DAG file builds from: FRESHET_CONFIG, else the embedded demo's."""
    return os.environ.get("FRESHET_CONFIG") or str(REPO / "configs" / "demo.yaml")


@functools.lru_cache(maxsize=8)
def pipeline_config(path: str) -> PipelineConfig:
    return load_config(path)


def retry_policy(config: PipelineConfig, name: str) -> dict[str, Any]:
    """Exponential backoff for steps that talk to the network (tasks.pipeline says which); none where the same
    inputs fail the same way."""
    settings = config.schedule
    if not pipeline_step(name).network:
        return {"retries": 0}
    return {"retries": settings.retries, "retry_delay": timedelta(seconds=settings.retry_delay_s),
            "retry_exponential_backoff": True, "max_retry_delay": timedelta(seconds=settings.max_retry_delay_s)}


def pipeline_schedule(config_path: str) -> Any:
    """Daily, or also on new source pages (the watcher's Asset). A data-interval timetable: the run for day D
    starts after D ends and crawls pages dated up to D."""
    config = pipeline_config(config_path)
    settings = config.schedule
    timetable = CronDataIntervalTimetable(settings.cron, timezone="UTC")
    assets = [source_asset(config)] if settings.watch_source else []
    if config.monitor.retrain_on_breach:  # the monitor's breaches start a run too
        assets.append(production_drift_asset(config))
    if not assets:
        return timetable
    condition = assets[0]
    for asset in assets[1:]:
        condition = condition | asset  # any of them
    return AssetOrTimeSchedule(timetable=timetable, assets=condition)


def production_schedules(config_path: str) -> dict[str, Any]:
    """The schedules of the production DAGs: `freshet_score` daily (`score.cron`, a data interval, so the
    run for day D scores D's drop folder; None: triggered only), and `freshet_monitor` (`monitor.cron`) and
    `freshet_label` (`label.cron`) daily and whenever the prediction log's Asset is updated (batch scoring, or a
    POST to Airflow's REST API)."""
    config = pipeline_config(config_path)
    score = CronDataIntervalTimetable(config.score.cron, timezone="UTC") if config.score.cron else None
    monitor = AssetOrTimeSchedule(timetable=CronDataIntervalTimetable(config.monitor.cron, timezone="UTC"),
                                  assets=prediction_log_asset(config))
    # freshet_label: daily (`label.cron`) and after each batch scoring (the prediction log's Asset).
    label = (AssetOrTimeSchedule(timetable=CronDataIntervalTimetable(config.label.cron, timezone="UTC"),
                                 assets=prediction_log_asset(config))
             if config.label.cron else prediction_log_asset(config))
    return {"freshet_score": score, "freshet_monitor": monitor, "freshet_label": label}


def production_dag_settings(config_path: str) -> dict[str, Any]:
    """DAG(...) keyword arguments of the production DAGs besides the schedule: the pipeline's start date, no
    catch-up, one active run (the monitor's cooldown reads the breaches of the runs before it), no retries
    (the steps are deterministic), failure notifications."""
    config = pipeline_config(config_path)
    start = config.schedule.start_date
    return {"start_date": pendulum.datetime(start.year, start.month, start.day, tz="UTC"), "catchup": False,
            "max_active_runs": 1, "default_args": {"retries": 0, "on_failure_callback": failure_callbacks(config)}}


def pipeline_dag_settings(config_path: str) -> dict[str, Any]:
    """DAG(...) keyword arguments from the config besides the schedule: start, catch-up, one active run,
    retries off by default (steps opt in), failure notifications, the `force_training` param."""
    config = pipeline_config(config_path)
    settings = config.schedule
    start = settings.start_date
    return {
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
                              "retry_delay": timedelta(seconds=settings.retry_delay_s),
                              "execution_timeout": timedelta(hours=6)}
    if settings.training_pool:
        kwargs.update(pool=settings.training_pool, pool_slots=1)
    return kwargs
