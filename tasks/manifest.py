"""What a step leaves behind: artifact references and the manifest (the commit point), and the error a step
raises when it can name what failed. Plain types, so the tracking helpers and the contract can both use them."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

MetricValue = float | int | str | bool | None


class StepError(RuntimeError):
    """A step failed for a reason it can name (source, row, field, expectation, threshold)."""


class ArtifactRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str
    kind: Literal["dataset", "model", "file", "directory", "report"]
    digest: str
    rows: int | None = None
    meta: dict[str, Any] = {}


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: str
    run_id: str
    uri: str
    fingerprint: str
    config_hash: str
    logical_date: str | None = None
    inputs: dict[str, str] = {}  # input name -> upstream manifest fingerprint
    outputs: dict[str, ArtifactRef] = {}
    metrics: dict[str, MetricValue] = {}
    facts: dict[str, Any] = {}  # small structured results (gate checks, registry versions, ...)
    created_at: str
    reused: bool = False

    def output(self, name: str) -> ArtifactRef:
        try:
            return self.outputs[name]
        except KeyError as error:
            raise StepError(f"{self.step} manifest {self.uri} has no output {name!r}; has {sorted(self.outputs)}") from error


def airflow_identity() -> dict[str, str]:
    """The Airflow run that launched this step (set by our operators), for MLflow tags."""
    keys = {"dag_id": "FRESHET_DAG_ID", "dag_run_id": "FRESHET_DAG_RUN_ID", "try_number": "FRESHET_TRY_NUMBER"}
    return {name: os.environ[var] for name, var in keys.items() if os.environ.get(var)}
