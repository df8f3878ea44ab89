"""MLflow helpers: one parent run per pipeline run, one nested run per step (resumed on retry).

Nothing here resolves a tracking server at import time; the URI comes from the config.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.config import PipelineConfig
from tasks.manifest import ArtifactRef, Manifest, airflow_identity

log = logging.getLogger("freshet.tracking")


DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def default_artifact_location(tracking_uri: str, artifact_root: str) -> str | None:
    """Where an experiment keeps its artifacts when `mlflow.artifact_location` is not set.

    With a database tracking URI MLflow's client would put them in `./mlruns` of whatever directory the step
    runs in (a stray folder there, and artifacts scattered over working directories): `mlartifacts` beside the
    SQLite file instead (`mlflow ui`'s own convention), or under `artifact_root` for another database. None for
    a tracking server or a file store, which have their own place."""
    scheme = tracking_uri.split(":", 1)[0].split("+", 1)[0]
    if "://" not in tracking_uri or scheme not in DATABASE_SCHEMES:
        return None
    if scheme == "sqlite":
        database = tracking_uri.removeprefix("sqlite:///")
        if database and database != tracking_uri and database != ":memory:":
            return str(Path(database).resolve().parent / "mlartifacts")
    if "://" in artifact_root:
        return f"{artifact_root.rstrip('/')}/mlartifacts"
    return str(Path(artifact_root).resolve() / "mlartifacts")


def configure(config: PipelineConfig):
    """Point the MLflow client at the configured tracking server; returns the experiment id."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    mlflow.set_registry_uri(config.mlflow.tracking_uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = (config.mlflow.artifact_location
                         or default_artifact_location(config.mlflow.tracking_uri, config.artifact_root))
    try:
        return client.create_experiment(config.mlflow.experiment, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:
        # Another step created it concurrently.
        created = client.get_experiment_by_name(config.mlflow.experiment)
        if created is None:
            raise
        return created.experiment_id


def _find_run(client, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


@contextmanager
def step_run(config: PipelineConfig, run_id: str, step: str, logical_date: str | None = None) -> Iterator[Any]:
    """Active MLflow run for `step`, nested under the pipeline run `run_id`."""
    import mlflow

    experiment_id = configure(config)
    client = mlflow.MlflowClient()
    pipeline_tags = {"freshet.run_id": run_id, "freshet.kind": "pipeline"}
    parent_id = _find_run(client, experiment_id, pipeline_tags)
    if parent_id is None:
        parent = client.create_run(
            experiment_id,
            run_name=f"{config.name} {logical_date or run_id}",
            tags={**pipeline_tags, "freshet.config_hash": config.config_hash,
                  **{f"airflow.{key}": value for key, value in airflow_identity().items() if key != "try_number"}},
        )
        parent_id = parent.info.run_id
    step_tags = {"freshet.run_id": run_id, "freshet.step": step}
    existing = _find_run(client, experiment_id, step_tags)
    step_run_tags = {**step_tags, "mlflow.parentRunId": parent_id,
                     **{f"airflow.{k}": v for k, v in airflow_identity().items()}}
    with (mlflow.start_run(run_id=parent_id, log_system_metrics=False),
          mlflow.start_run(run_id=existing, experiment_id=experiment_id, run_name=None if existing else step,
                           nested=True, tags=step_run_tags) as run):
        yield run


TRACKED_TAG = "freshet.tracked"  # the manifest fingerprint whose record is complete in this run


def mark_tracked(fingerprint: str) -> None:
    import mlflow

    mlflow.set_tag(TRACKED_TAG, fingerprint)


def is_tracked(config: PipelineConfig, run_id: str, step: str, fingerprint: str) -> bool:
    """Whether the step's MLflow run holds the complete record of this manifest (and was ended)."""
    import mlflow

    experiment_id = configure(config)
    client = mlflow.MlflowClient()
    found = _find_run(client, experiment_id, {"freshet.run_id": run_id, "freshet.step": step})
    if found is None:
        return False
    run = client.get_run(found)
    return run.data.tags.get(TRACKED_TAG) == fingerprint and run.info.status == "FINISHED"


def manifest_timestamp(manifest: Manifest) -> int:
    """The manifest's commit time in epoch milliseconds: the timestamp of every metric recorded from it, so recording
    it again after a kill logs the very same points (MLflow keeps one of identical points), not a second series."""
    return int(dt.datetime.fromisoformat(manifest.created_at).timestamp() * 1000)


def log_manifest(manifest: Manifest) -> None:
    """Log a step's numeric metrics and its manifest to the active MLflow run."""
    import mlflow

    numeric = {key: float(value) for key, value in manifest.metrics.items()
               if isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)}
    if numeric:
        mlflow.log_metrics(numeric, timestamp=manifest_timestamp(manifest))
    # Tags, not params: a retried step with new inputs must be able to overwrite them.
    mlflow.set_tags({"freshet.config_hash": manifest.config_hash, "freshet.fingerprint": manifest.fingerprint})
    mlflow.log_dict(manifest.model_dump(mode="json"), "manifest.json")


def log_metric_history(points: Iterable[Mapping[str, Any]]) -> None:
    """Replay metrics recorded while a step ran ({"step", "timestamp", "metrics": {name: value}} each) into the
    active MLflow run, at their own steps and times: replayed twice, MLflow still holds each point once."""
    import mlflow
    from mlflow.entities import Metric

    metrics = [Metric(name, float(value), int(point["timestamp"]), int(point["step"]))
               for point in points for name, value in point["metrics"].items()]
    active = mlflow.active_run()
    if active is None:
        raise RuntimeError("log_metric_history: no active MLflow run (call it inside the step's run)")
    client = mlflow.MlflowClient()
    for start in range(0, len(metrics), _MLFLOW_BATCH_METRICS):
        client.log_batch(active.info.run_id, metrics=metrics[start:start + _MLFLOW_BATCH_METRICS])


_MLFLOW_BATCH_METRICS = 1000  # the most metrics one log_batch call takes

# MLflow stores a dataset digest in a 36-character column; our full digest goes into an input tag.
_MLFLOW_DIGEST_CHARS = 36


def log_dataset(frame: Any, ref: ArtifactRef, name: str, context: str) -> None:
    """Log a dataset artifact (a pandas frame of it) as an input of the active MLflow run."""
    import mlflow
    import mlflow.data

    with warnings.catch_warnings():
        # MLflow registers its local source under two schemes and warns that a file:// URI is ambiguous.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        # mlflow.data re-exports from_pandas lazily, which mypy cannot see.
        dataset = mlflow.data.from_pandas(frame, source=ref.uri, name=name,  # type: ignore[attr-defined]
                                          digest=ref.digest.removeprefix("sha256:")[:_MLFLOW_DIGEST_CHARS])
    mlflow.log_input(dataset, context=context, tags={"freshet.digest": ref.digest})
