"""Validate a crawled batch with Great Expectations.

Row-level failures (null fields, duplicate ids, text length out of bounds, a printable-character ratio
below `validate.min_printable_ratio`, unknown labels) move the row to `quarantine.parquet`, one
quarantine row per failed expectation, so a row failing two checks appears twice; the rest is
`valid.parquet`. Duplicate ids keep their first occurrence in crawl order.

Batch-level checks reject the batch: missing columns, fewer than `validate.min_rows` rows, a
quarantined fraction above `validate.max_quarantine_fraction`, a duplicate-text fraction above
`validate.max_duplicate_fraction`, unknown labels when `validate.new_labels` is `reject` (with `extend`
they are accepted and join the label set: facts `labels`, `labels_new`), and drift of
the valid rows against a reference profile of the accepted history: the population stability index
(PSI) of the label distribution and of the text-length distribution (bins at the reference's
quantiles). Drift is skipped, and reported so, on the first run (no history) and for batches smaller
than `validate.drift_min_rows`. A rejected batch keeps its quarantine and GX result (with the batch
checks) under `runs/<run_id>/validate.failed/`, and the step raises a `StepError` naming every failed
check with its observed value and bound.

Both outcomes write `validation_report.html` beside the GX result JSON (and log both to MLflow): a
self-contained page with the verdict, every expectation with its bounds, observed value, success and
quarantined row ids, and the batch checks. The crawled batch (context `input`) and the valid rows
(context `output`) are logged as MLflow dataset inputs with their digests.

This module is the step; its parts are in `tasks/validation/`: the GX adapter (`expectations`), the
quarantine, the batch checks and the report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from tasks.checks import Check
from tasks.config import PipelineConfig
from tasks.contract import StepContext, cli, execute, parse_bool, read_manifest
from tasks.inbox import pending_batches, set_aside, taken_elsewhere
from tasks.label_set import extend_labels, snapshot_labels
from tasks.manifest import ArtifactRef, Manifest, StepError, StepFacts
from tasks.records import QUARANTINE_SCHEMA, RECORD_COLUMNS, RECORD_SCHEMA, write_parquet
from tasks.snapshots import prior_snapshots
from tasks.store import ArtifactStore
from tasks.tracking import log_dataset, log_manifest, step_run
from tasks.validation import STEP
from tasks.validation.batch_checks import batch_checks, batch_problems
from tasks.validation.expectations import ExpectationOutcome, check_expectations, json_safe
from tasks.validation.quarantine import (
    Failure,
    carried_quarantine,
    describe_failures,
    failure_metrics,
    quarantine_rows,
)
from tasks.validation.report import REPORT_FILE, render_report

log = logging.getLogger("freshet.validate")
FAILED_STEP = "validate.failed"


class InboxBatch(BaseModel):
    """A batch an earlier run committed and this run took in (clean accepts it with this run's)."""

    run_id: str
    logical_date: str | None
    rows: int | None
    digest: str


class DriftReference(BaseModel):
    """The accepted history the drift checks measured against: the snapshots read (run ids) and their rows."""

    snapshots: list[str]
    rows: int


class ValidateFacts(StepFacts):
    """The batches taken in from earlier runs, the batch checks, the drift reference, the rows each failed
    expectation quarantined; with `validate.new_labels: extend` the label set and the labels this batch added; the
    extra columns the crawl carried, when there were any."""

    inbox_batches: list[InboxBatch]
    batch_checks: list[Check]
    drift_reference: DriftReference
    failed_expectations: dict[str, int]
    labels: list[str] | None = None
    labels_new: list[str] | None = None
    ignored_columns: list[str] | None = None


class RejectedBatchFacts(StepFacts):
    """The facts of a rejected batch's `validate.failed` manifest: the rejection, every failed check named."""

    error: str


class BatchRejected(StepError):
    """The batch as a whole failed validation; `failed_uri` holds its quarantine and GX result."""

    def __init__(self, message: str, failed_uri: str) -> None:
        super().__init__(message)
        self.failed_uri = failed_uri


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


def persist_rejected_batch(context: StepContext, quarantine_table: pa.Table, result: Mapping[str, Any],
                           metrics: Mapping[str, Any], message: str, report: str) -> str:
    """Keep what a rejected batch produced as its own step, `validate.failed` (`runs/<run_id>/validate.failed/`),
    through the contract like any step's outputs: staged, then committed with its manifest, once per validate
    fingerprint. Its MLflow record is validate's own run, which ends FAILED (`record_rejection`)."""

    def body(failed: StepContext) -> None:
        write_parquet(quarantine_table, failed.out_dir / "quarantine.parquet")
        (failed.out_dir / "gx_result.json").write_text(json.dumps(result, indent=2, allow_nan=False))
        (failed.out_dir / REPORT_FILE).write_text(report)
        failed.add_output("quarantine", "quarantine.parquet", "dataset", rows=quarantine_table.num_rows)
        failed.add_output("gx_result", "gx_result.json", "report")
        failed.add_output("validation_report", REPORT_FILE, "report")
        failed.metrics.update(metrics)
        failed.facts.update(RejectedBatchFacts(error=message).dump())

    execute(FAILED_STEP, body, context.config, context.inputs, run_id=context.run_id, store=context.store,
            logical_date=context.logical_date, config_sections=(STEP,),
            extra_fingerprint={"validate": context.fingerprint})
    return context.store.step_uri(context.run_id, FAILED_STEP)


def run(config: PipelineConfig, inputs: Mapping[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None, allow_empty: bool = False) -> Manifest:
    """`allow_empty`: accept a batch of no rows (the DAG sets it in a forced run, whose crawl may find nothing)."""
    # The drift reference is accepted history, so it is an input: a new snapshot recomputes the step.
    snapshots = prior_snapshots(store, run_id, logical_date)
    stranded = stranded_batches(store, run_id, inputs["crawl"])

    def body(context: StepContext) -> None:
        crawl = context.input("crawl")
        table, extra_columns = read_batches(context, store, stranded)
        rows = table.to_pylist()
        result, outcomes = check_expectations(table, config)
        quarantined, failures = quarantine_rows(outcomes, rows, config)
        quarantined_numbers = {number for _, numbers in failures for number in numbers}
        valid = [row for number, row in enumerate(rows) if number not in quarantined_numbers]
        carried = carried_quarantine(context, store, crawl, stranded)
        quarantine_table = pa.Table.from_pylist(carried + quarantined, schema=QUARANTINE_SCHEMA)

        checks, reference = batch_checks(config, store, snapshots, outcomes, valid, len(rows))
        result["freshet_batch_checks"] = json_safe([check.model_dump() for check in checks])

        context.metrics.update(batch_metrics(rows, valid, quarantined_numbers, carried, stranded, outcomes, failures,
                                             checks))
        problems = batch_problems(outcomes, context.metrics, config, rows, checks, allow_empty)
        report = render_report(result, failures, rows, checks, context.metrics, problems, run_id=run_id, config=config)
        if problems:
            reject(context, problems, failures, rows, quarantine_table, result, report)
        write_accepted(context, valid, quarantine_table, result, report)
        facts = ValidateFacts(
            inbox_batches=[InboxBatch.model_validate({key: entry[key] for key in ("run_id", "logical_date", "rows",
                                                                                   "digest")}) for entry in stranded],
            batch_checks=[Check.model_validate(check) for check in result["freshet_batch_checks"]],
            drift_reference=DriftReference(snapshots=reference.snapshots if reference else [],
                                           rows=len(reference.labels) if reference else 0),
            failed_expectations={outcome.name: len(numbers) for outcome, numbers in failures})
        if config.validate_.new_labels == "extend":
            facts.labels, facts.labels_new = grown_labels(config, store, snapshots, valid)
            context.metrics["labels_new"] = len(facts.labels_new)
        if extra_columns:
            facts.ignored_columns = extra_columns
        context.facts.update(facts.dump())

    def track(manifest: Manifest) -> None:
        mlflow.set_tag("freshet.status", "valid")
        for name in ("gx_result", "validation_report", "quarantine"):
            mlflow.log_artifact(str(store.local_path(manifest.output(name).uri)))
        log_snapshots(config, store, inputs["crawl"].output("records"), manifest.output("valid"))

    try:
        manifest = execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                           config_sections=(STEP,),
                           extra_fingerprint={"reference_snapshots": [item["digest"] for item in snapshots],
                                              "inbox": [entry["digest"] for entry in stranded],
                                              "allow_empty": allow_empty},
                           track=track)
    except BatchRejected as rejection:
        record_rejection(config, store, run_id, logical_date, inputs["crawl"], stranded, rejection)
    return manifest


def reject(context: StepContext, problems: Sequence[str], failures: Sequence[Failure],
           rows: Sequence[Mapping[str, Any]], quarantine_table: pa.Table, result: Mapping[str, Any],
           report: str) -> NoReturn:
    """A rejected batch: its evidence kept under `validate.failed/`, and BatchRejected naming every problem."""
    message = (f"batch rejected: {'; '.join(problems)}. "
               f"Failed expectations: {describe_failures(failures, rows)}.")
    failed_uri = persist_rejected_batch(context, quarantine_table, result, context.metrics, message, report)
    raise BatchRejected(f"{message} Quarantine and GX result kept in {failed_uri}", failed_uri)


def batch_metrics(rows: Sequence[Any], valid: Sequence[Any], quarantined_numbers: set[int], carried: Sequence[Any],
                  stranded: Sequence[Mapping[str, Any]], outcomes: Sequence[ExpectationOutcome],
                  failures: Sequence[Failure], checks: Sequence[Check]) -> dict[str, Any]:
    """Rows in, valid and quarantined (here and by the crawl), failures per expectation and the checks' values."""
    return {
        "rows_in": len(rows),
        "rows_valid": len(valid),
        "rows_quarantined": len(quarantined_numbers),
        "rows_quarantined_by_crawl": len(carried),
        "rows_from_earlier_runs": sum(int(entry["rows"] or 0) for entry in stranded),
        "quarantine_fraction": len(quarantined_numbers) / len(rows) if rows else 0.0,
        **failure_metrics(outcomes, failures),
        # None (not logged to MLflow) when a check was skipped.
        **{check.name: check.value for check in checks},
    }


def write_accepted(context: StepContext, valid: Sequence[Mapping[str, Any]], quarantine_table: pa.Table,
                   result: Mapping[str, Any], report: str) -> None:
    """An accepted batch's outputs: the valid rows, the quarantine, the GX result and the report."""
    write_parquet(valid, context.out_dir / "valid.parquet", schema=RECORD_SCHEMA)
    write_parquet(quarantine_table, context.out_dir / "quarantine.parquet")
    (context.out_dir / "gx_result.json").write_text(json.dumps(result, indent=2, allow_nan=False))
    (context.out_dir / REPORT_FILE).write_text(report)
    context.add_output("valid", "valid.parquet", "dataset", rows=len(valid))
    context.add_output("quarantine", "quarantine.parquet", "dataset", rows=quarantine_table.num_rows)
    context.add_output("gx_result", "gx_result.json", "report", success=bool(result["success"]))
    context.add_output("validation_report", REPORT_FILE, "report")


def stranded_batches(store: ArtifactStore, run_id: str, crawl: Manifest) -> list[dict[str, Any]]:
    """The batches earlier runs committed but never got accepted (a run that died after its crawl), to take in
    with this run's, oldest first; none when this run's batch lacks the record columns (it will be rejected,
    and must not take them along). This run's batch already taken in by another run stops the step."""
    taken = taken_elsewhere(store, run_id)
    if taken is not None:
        by = taken["accepted_by"] or taken["rejected_by"]
        raise StepError(f"{STEP}: run {run_id}'s crawl batch was already {'accepted' if taken['accepted_by'] else 'set aside'}"
                        f" by run {by} (state/inbox.json); nothing of it is taken in twice. Nothing to do for this run.")
    own_columns = pq.read_schema(store.local_path(crawl.output("records").uri)).names
    return [entry for entry in pending_batches(store, run_id) if entry["run_id"] != run_id
            and set(RECORD_COLUMNS) <= set(own_columns)]


def read_batches(context: StepContext, store: ArtifactStore, stranded: Sequence[dict[str, Any]]
                 ) -> tuple[pa.Table, list[str]]:
    """The stranded batches' records, then this run's (and the extra columns this run's batch carried)."""
    table, extra_columns = read_batch(context.input_path("crawl", "records"))
    if stranded:
        earlier = [read_batch(store.local_path(entry["records"]))[0] for entry in stranded]
        table = pa.concat_tables([*(part.select(list(RECORD_COLUMNS)) for part in earlier),
                                  table.select(list(RECORD_COLUMNS))])
        log.info("validate: taking in %d rows from %d earlier run(s) whose batches were never accepted: %s",
                 sum(part.num_rows for part in earlier), len(stranded), [entry["run_id"] for entry in stranded])
    return table, extra_columns


def grown_labels(config: PipelineConfig, store: ArtifactStore, snapshots: Sequence[dict[str, Any]],
                 valid: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """`validate.new_labels: extend`: the label set after this batch, and the labels it added (in order)."""
    before = extend_labels(config.labels, (snapshot_labels(store, entry["uri"]) for entry in snapshots))
    after = extend_labels(before, [{str(row["label"]) for row in valid}])
    return after, after[len(before):]


def record_rejection(config: PipelineConfig, store: ArtifactStore, run_id: str, logical_date: str | None,
                     crawl: Manifest, stranded: Sequence[dict[str, Any]], rejection: BatchRejected) -> NoReturn:
    """A rejected batch (and the stranded ones it took in) set aside, so the next run does not take it in again
    and fail the same way; the step's MLflow run ends FAILED with the evidence attached."""
    set_aside(store, [run_id, *(entry["run_id"] for entry in stranded)], run_id, str(rejection))
    with step_run(config, run_id, STEP, logical_date):
        failed = read_manifest(store, run_id, FAILED_STEP)
        if failed is not None:
            log_manifest(failed)
        mlflow.set_tag("freshet.status", "rejected")
        mlflow.log_artifacts(str(store.local_path(rejection.failed_uri)), artifact_path=FAILED_STEP)
        log_snapshots(config, store, crawl.output("records"))
        raise rejection  # inside the run, so it ends FAILED


def log_snapshots(config: PipelineConfig, store: ArtifactStore, records: ArtifactRef,
                  valid: ArtifactRef | None = None) -> None:
    """The crawled batch (and the valid rows, when accepted) as MLflow dataset inputs with their digests;
    names match crawl's and clean's, so MLflow links the same snapshot across steps."""
    log_dataset(pd.read_parquet(store.local_path(records.uri)), records, name=f"{config.name}.records",
                context="input")
    if valid is not None:
        log_dataset(pd.read_parquet(store.local_path(valid.uri)), valid, name=f"{config.name}.valid",
                    context="output")


ALLOW_EMPTY = {"--allow-empty": {"dest": "allow_empty", "type": parse_bool, "default": False, "metavar": "BOOL",
                                  "help": "accept a batch of no rows (the DAG's force_training param: a retry after a"
                                          " fix that brings no new files)"}}


def main(argv: Sequence[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__, options=ALLOW_EMPTY)


if __name__ == "__main__":
    raise SystemExit(main())
