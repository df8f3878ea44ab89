"""Validate a crawled batch with Great Expectations.

Row-level failures (null fields, duplicate ids, text length out of bounds, unknown labels) move the row
to `quarantine.parquet`, one quarantine row per failed expectation, so a row failing two checks appears
twice; the rest is `valid.parquet`. Duplicate ids keep their first occurrence in crawl order. A batch
with missing columns, fewer than `validate.min_rows` rows or a quarantined fraction above
`validate.max_quarantine_fraction` is rejected: the quarantine and the GX result are kept under
`runs/<run_id>/validate.failed/` and the step raises a `StepError` naming every failed expectation.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import PipelineConfig, digest_json
from tasks.contract import ArtifactRef, Manifest, StepContext, StepError, cli, execute, read_manifest
from tasks.data import QUARANTINE_SCHEMA, RECORD_COLUMNS, RECORD_SCHEMA, read_rows, write_parquet
from tasks.store import ArtifactStore, digest_path
from tasks.tracking import log_dataset, log_manifest, step_run

STEP = "validate"
FAILED_STEP = "validate.failed"
# Position in records.parquet: names a row even when its id is null or duplicated.
ROW_NUMBER = "row_number"
RESULT_FORMAT = {"result_format": "COMPLETE", "unexpected_index_column_names": ["id", ROW_NUMBER]}
COLUMNS_EXPECTATION = "expect_table_columns_to_match_set"
EXAMPLE_IDS = 5


class BatchRejected(StepError):
    """The batch as a whole failed validation; `failed_uri` holds its quarantine and GX result."""

    def __init__(self, message: str, failed_uri: str) -> None:
        super().__init__(message)
        self.failed_uri = failed_uri


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's verdict, reduced to what the step acts on."""

    expectation: str
    column: str | None
    success: bool
    failing_rows: tuple[int, ...]  # row numbers
    observed: Any = None
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.expectation}({self.column})" if self.column else self.expectation


# An expectation that failed and the row numbers it quarantined.
Failure = tuple[ExpectationOutcome, list[int]]


# ------------------------------------------------------------------------------ Great Expectations


def _import_great_expectations() -> Any:
    """Import GX quietly and offline (it is slow to import, so only when a batch is validated)."""
    # GX 1.24 ships no analytics client; the variable keeps any later version from phoning home.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # Otherwise ~200 INFO lines per validation in the Airflow task log.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations

    return great_expectations


def build_expectations(config: PipelineConfig) -> list[Any]:
    """The suite, derived from the config: schema, non-null keys, unique ids, text length, known labels."""
    expectations = _import_great_expectations().expectations
    bounds = config.validate_
    return [
        # Extra columns are tolerated (and dropped from the output); missing ones reject the batch.
        expectations.ExpectTableColumnsToMatchSet(column_set=list(RECORD_COLUMNS), exact_match=False),
        *(expectations.ExpectColumnValuesToNotBeNull(column=column) for column in ("id", "text", "label")),
        expectations.ExpectColumnValuesToBeUnique(column="id"),
        expectations.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=bounds.min_text_chars, max_value=bounds.max_text_chars),
        expectations.ExpectColumnValuesToBeInSet(column="label", value_set=list(config.labels)),
    ]


def run_expectations(frame: pd.DataFrame, config: PipelineConfig) -> dict[str, Any]:
    """Validate a dataframe in an ephemeral (in-memory, offline) GX context; returns the JSON-safe result."""
    gx = _import_great_expectations()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),  # tqdm bars would flood the task log
        ),
    )
    batch = (context.data_sources.add_pandas("crawl")
             .add_dataframe_asset("records")
             .add_batch_definition_whole_dataframe("whole_batch"))
    suite = context.suites.add(
        gx.ExpectationSuite(name=f"{config.name}.records", expectations=build_expectations(config)))
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{config.name}.{STEP}", data=batch, suite=suite))
    result = validation.run(batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT)
    return json_safe(result.to_json_dict())


def json_safe(value: Any) -> Any:
    """Plain JSON values: numpy scalars become Python ones, NaN becomes null (GX results carry both)."""
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | np.ndarray):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def outcomes_of(result: Mapping[str, Any]) -> list[ExpectationOutcome]:
    outcomes = []
    for item in result["results"]:
        configuration = item["expectation_config"]
        details = item.get("result") or {}
        exception = item.get("exception_info") or {}
        # A metric failure nests its exception info one level down, keyed by metric id.
        messages = [exception.get("exception_message")] if "raised_exception" in exception else [
            info.get("exception_message") for info in exception.values() if isinstance(info, Mapping)]
        error = "; ".join(sorted({message for message in messages if message})) or None
        outcomes.append(ExpectationOutcome(
            expectation=configuration["type"],
            column=configuration["kwargs"].get("column"),
            success=bool(item["success"]),
            failing_rows=tuple(int(index[ROW_NUMBER]) for index in details.get("unexpected_index_list") or ()),
            observed=details.get("observed_value"),
            error=error,
        ))
    return outcomes


# ---------------------------------------------------------------------------------- quarantine


def failure_reason(outcome: ExpectationOutcome, row: Mapping[str, Any], config: PipelineConfig,
                    first_row_of_id: Mapping[Any, int]) -> str:
    column = outcome.column or ""
    value = row.get(column)
    if outcome.expectation == COLUMNS_EXPECTATION:
        return f"the batch lacks record columns {missing_columns(outcome)}"
    if outcome.expectation == "expect_column_values_to_not_be_null":
        return f"{column} is null"
    if outcome.expectation == "expect_column_values_to_be_unique":
        return f"id {value!r} already seen in row {first_row_of_id[value]}; the first occurrence is kept"
    if outcome.expectation == "expect_column_value_lengths_to_be_between":
        bounds = config.validate_
        return f"{column} has {len(str(value))} characters, outside [{bounds.min_text_chars}, {bounds.max_text_chars}]"
    if outcome.expectation == "expect_column_values_to_be_in_set":
        return f"{column} {value!r} is not one of the configured labels"
    return f"failed {outcome.name}"


def missing_columns(outcome: ExpectationOutcome) -> list[str]:
    return sorted(set(RECORD_COLUMNS) - set(outcome.observed or ()))


def quarantined_rows_of(outcome: ExpectationOutcome, rows: Sequence[Mapping[str, Any]],
                        first_row_of_id: Mapping[Any, int]) -> list[int]:
    if outcome.expectation == COLUMNS_EXPECTATION:
        # Without the record schema no row can be used.
        return [] if outcome.success else list(range(len(rows)))
    if outcome.expectation == "expect_column_values_to_be_unique":
        # GX flags every member of a duplicate group; the first one stays valid.
        return [number for number in outcome.failing_rows if first_row_of_id[rows[number].get("id")] != number]
    return list(outcome.failing_rows)


def quarantine_rows(outcomes: Sequence[ExpectationOutcome], rows: Sequence[Mapping[str, Any]],
                    config: PipelineConfig) -> tuple[list[dict[str, Any]], list[Failure]]:
    """Quarantine records (one per failed expectation per row) and the quarantined row numbers per expectation."""
    first_row_of_id: dict[Any, int] = {}
    for number, row in enumerate(rows):
        first_row_of_id.setdefault(row.get("id"), number)
    quarantined: list[dict[str, Any]] = []
    failures: list[Failure] = []
    for outcome in outcomes:
        numbers = quarantined_rows_of(outcome, rows, first_row_of_id)
        if not numbers:
            continue
        failures.append((outcome, numbers))
        field = outcome.column or ",".join(missing_columns(outcome))
        for number in numbers:
            row = rows[number]
            value = row.get(outcome.column) if outcome.column else None
            quarantined.append({
                "id": row.get("id"),
                "source": row.get("source"),
                "step": STEP,
                "check": outcome.expectation,
                "field": field,
                "value": None if value is None else str(value),
                "reason": failure_reason(outcome, row, config, first_row_of_id),
                "record_json": json.dumps(dict(row), ensure_ascii=False, default=str),
            })
    return quarantined, failures


def upstream_quarantine(path: Path | None) -> list[dict[str, Any]]:
    """Rows the crawl already quarantined, in the quarantine schema, so this step's quarantine is complete."""
    if path is None:
        return []
    return [{column: row.get(column) for column in QUARANTINE_SCHEMA.names} for row in read_rows(path)]


# ---------------------------------------------------------------------------------------- step


def read_batch(path: Path) -> tuple[pa.Table, list[str]]:
    """The crawled records; record columns are read as strings, extra columns are reported."""
    table = pq.read_table(path)
    extra_columns = [name for name in table.column_names if name not in RECORD_COLUMNS]
    if set(RECORD_COLUMNS) <= set(table.column_names):
        try:
            table = table.select(list(RECORD_COLUMNS)).cast(RECORD_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise StepError(f"{STEP}: {path}: record columns cannot be read as strings: {error}") from error
    return table, extra_columns


def persist_rejected_batch(ctx: StepContext, quarantine_table: pa.Table, result: Mapping[str, Any],
                           metrics: Mapping[str, Any], message: str) -> str:
    """Keep what a rejected batch produced under `runs/<run_id>/validate.failed/` (its own manifest last)."""
    store = ctx.store
    with store.staging(ctx.run_id, FAILED_STEP) as staged:
        write_parquet(quarantine_table, staged / "quarantine.parquet")
        (staged / "gx_result.json").write_text(json.dumps(result, indent=2, allow_nan=False))
        outputs = {
            name: ArtifactRef(uri=store.step_uri(ctx.run_id, FAILED_STEP, file), kind=kind,
                              digest=digest_path(staged / file), rows=rows)
            for name, file, kind, rows in (("quarantine", "quarantine.parquet", "dataset", quarantine_table.num_rows),
                                           ("gx_result", "gx_result.json", "report", None))
        }
        inputs = {name: manifest.fingerprint for name, manifest in ctx.inputs.items()}
        manifest = Manifest(
            step=FAILED_STEP, run_id=ctx.run_id, uri=store.step_uri(ctx.run_id, FAILED_STEP, "manifest.json"),
            fingerprint=digest_json({"step": FAILED_STEP, "inputs": inputs, "config": ctx.config.section_hash(STEP)}),
            config_hash=ctx.config.config_hash, logical_date=ctx.logical_date, inputs=inputs, outputs=outputs,
            metrics=dict(metrics), facts={"error": message}, created_at=dt.datetime.now(dt.timezone.utc).isoformat(),
        )
        (staged / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        store.commit(staged, ctx.run_id, FAILED_STEP)
    return store.step_uri(ctx.run_id, FAILED_STEP)


def batch_problems(outcomes: Sequence[ExpectationOutcome], metrics: Mapping[str, Any],
                   config: PipelineConfig) -> list[str]:
    """Why the batch as a whole is rejected; empty when it passes."""
    problems = []
    for outcome in outcomes:
        if outcome.expectation == COLUMNS_EXPECTATION and not outcome.success:
            problems.append(f"{COLUMNS_EXPECTATION}: missing columns {missing_columns(outcome)}")
        elif outcome.error:
            problems.append(f"{outcome.name} could not be evaluated: {outcome.error}")
    if metrics["rows_in"] < config.validate_.min_rows:
        problems.append(f"{metrics['rows_in']} rows, fewer than validate.min_rows={config.validate_.min_rows} "
                        "(did the crawl find nothing new?)")
    if metrics["quarantine_fraction"] > config.validate_.max_quarantine_fraction:
        problems.append(f"quarantined fraction {metrics['quarantine_fraction']:.3f} "
                        f"({metrics['rows_quarantined']} of {metrics['rows_in']} rows) "
                        f"> validate.max_quarantine_fraction={config.validate_.max_quarantine_fraction}")
    return problems


def describe_failures(failures: Sequence[Failure], rows: Sequence[Mapping[str, Any]]) -> str:
    described = [
        f"{outcome.name}: {len(numbers)} rows, e.g. ids {[rows[number].get('id') for number in numbers[:EXAMPLE_IDS]]}"
        for outcome, numbers in sorted(failures, key=lambda failure: -len(failure[1]))
    ]
    return "; ".join(described) or "none"


def failure_metrics(outcomes: Sequence[ExpectationOutcome], failures: Sequence[Failure]) -> dict[str, int]:
    """Quarantined rows per expectation type (zero for those that passed, so MLflow charts stay continuous)."""
    counts = {f"failed.{outcome.expectation}": 0 for outcome in outcomes}
    for outcome, numbers in failures:
        counts[f"failed.{outcome.expectation}"] += len(numbers)
    return counts


def run(config: PipelineConfig, inputs: Mapping[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None) -> Manifest:
    def body(ctx: StepContext) -> None:
        crawl = ctx.input("crawl")
        table, extra_columns = read_batch(ctx.input_path("crawl", "records"))
        rows = table.to_pylist()
        frame = table.to_pandas()
        frame[ROW_NUMBER] = np.arange(len(frame), dtype=np.int64)
        result = run_expectations(frame, config)
        outcomes = outcomes_of(result)

        quarantined, failures = quarantine_rows(outcomes, rows, config)
        quarantined_numbers = {number for _, numbers in failures for number in numbers}
        valid = [row for number, row in enumerate(rows) if number not in quarantined_numbers]
        carried = upstream_quarantine(
            ctx.input_path("crawl", "quarantine") if "quarantine" in crawl.outputs else None)
        quarantine_table = pa.Table.from_pylist(carried + quarantined, schema=QUARANTINE_SCHEMA)

        ctx.metrics.update({
            "rows_in": len(rows),
            "rows_valid": len(valid),
            "rows_quarantined": len(quarantined_numbers),
            "rows_quarantined_by_crawl": len(carried),
            "quarantine_fraction": len(quarantined_numbers) / len(rows) if rows else 0.0,
            **failure_metrics(outcomes, failures),
        })
        problems = batch_problems(outcomes, ctx.metrics, config)
        if problems:
            message = (f"batch rejected: {'; '.join(problems)}. "
                       f"Failed expectations: {describe_failures(failures, rows)}.")
            failed_uri = persist_rejected_batch(ctx, quarantine_table, result, ctx.metrics, message)
            raise BatchRejected(f"{message} Quarantine and GX result kept in {failed_uri}", failed_uri)

        write_parquet(valid, ctx.out_dir / "valid.parquet", schema=RECORD_SCHEMA)
        write_parquet(quarantine_table, ctx.out_dir / "quarantine.parquet")
        (ctx.out_dir / "gx_result.json").write_text(json.dumps(result, indent=2, allow_nan=False))
        ctx.add_output("valid", "valid.parquet", "dataset", rows=len(valid))
        ctx.add_output("quarantine", "quarantine.parquet", "dataset", rows=quarantine_table.num_rows)
        ctx.add_output("gx_result", "gx_result.json", "report", success=bool(result["success"]))
        ctx.facts["failed_expectations"] = {outcome.name: len(numbers) for outcome, numbers in failures}
        if extra_columns:
            ctx.facts["ignored_columns"] = extra_columns

    try:
        manifest = execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                           config_sections=(STEP,))
    except BatchRejected as rejection:
        import mlflow

        # Raised inside the MLflow run so it ends FAILED, with the evidence attached.
        with step_run(config, run_id, STEP, logical_date):
            log_manifest(read_manifest(store, run_id, FAILED_STEP))
            mlflow.set_tag("freshet.status", "rejected")
            mlflow.log_artifacts(str(store.local_path(rejection.failed_uri)), artifact_path=FAILED_STEP)
            raise
    if not manifest.reused:
        import mlflow

        with step_run(config, run_id, STEP, logical_date):
            log_manifest(manifest)
            mlflow.set_tag("freshet.status", "valid")
            for name in ("gx_result", "quarantine"):
                mlflow.log_artifact(str(store.local_path(manifest.output(name).uri)))
            valid = manifest.output("valid")
            log_dataset(pd.read_parquet(store.local_path(valid.uri)), valid, name=f"{config.name}.valid", context=STEP)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
