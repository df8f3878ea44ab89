"""The Airflow Assets freshet's DAGs update and are scheduled on: new source pages (the watcher), the prediction
log (`freshet serve` and batch scoring) and production drift (the monitor's breaches)."""

from __future__ import annotations

from airflow.sdk import Asset

from tasks.serve.prediction_log import prediction_log_uri


def source_asset(config):
    """The Asset the watcher updates when a source lists pages the crawler has not fetched yet."""
    return Asset(name=f"freshet.{config.name}.source_pages", group="freshet",
                 extra={"sources": [source.url for source in config.crawl.sources]})


def prediction_log_asset(config):
    """The Asset of `freshet serve`'s prediction log (day-partitioned Parquet under the artifact root): a DAG
    scheduled on it (`schedule=[prediction_log_asset(config)]`) runs when a task that writes or reads the log
    names it in its `outlets`, or when an event is posted to Airflow's REST API (`POST /api/v2/assets/events`)."""
    return Asset(name=f"freshet.{config.name}.prediction_log", uri=prediction_log_uri(config), group="freshet",
                 extra={"format": "parquet", "partitioning": "date=YYYY-MM-DD", "model": config.mlflow.model_name})


def production_drift_asset(config):
    """The Asset the monitor's `production_drift` task updates when it emits a breach (never otherwise): the
    pipeline DAG is scheduled on it too, so a breach starts a run, whose `decide` trains on it."""
    return Asset(name=f"freshet.{config.name}.production_drift", group="freshet",
                 extra={"model": config.mlflow.model_name, "state": "state/monitor/breach.json"})
