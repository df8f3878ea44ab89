"""What a step leaves behind: artifact references and the manifest (the commit point), and the error a step
raises when it can name what failed. Plain types, so the tracking helpers and the contract can both use them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal, Self

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


class StepFacts(BaseModel):
    """A step's facts, typed: the step writes them with `dump()` into its manifest, and every reader (control
    tasks, the next step, the demo, tests) reads them with `of(manifest)`, so a misspelt key or a wrong word fails
    where it is written, not silently where it is read. Subclasses live beside their step."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def of(cls, manifest: Manifest | Mapping[str, Any]) -> Self:
        """From a manifest, or its JSON form (an XCom)."""
        return cls.model_validate(manifest.facts if isinstance(manifest, Manifest) else manifest["facts"])

    def dump(self) -> dict[str, Any]:
        """The manifest's facts: the fields the step set (an optional fact it did not set stays absent; nested
        values are dumped whole)."""
        return {name: value for name, value in self.model_dump().items() if name in self.model_fields_set}


def airflow_identity() -> dict[str, str]:
    """The Airflow run that launched this step (set by our operators), for MLflow tags."""
    keys = {"dag_id": "FRESHET_DAG_ID", "dag_run_id": "FRESHET_DAG_RUN_ID", "try_number": "FRESHET_TRY_NUMBER"}
    return {name: os.environ[var] for name, var in keys.items() if os.environ.get(var)}
