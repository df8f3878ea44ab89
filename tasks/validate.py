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
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.checks import Check, failed, judge, skipped
from tasks.config import PipelineConfig, digest_json
from tasks.contract import StepContext, cli, execute, parse_bool, read_manifest
from tasks.inbox import pending_batches, set_aside, taken_elsewhere
from tasks.label_set import extend_labels, snapshot_labels
from tasks.manifest import ArtifactRef, Manifest, StepError
from tasks.monitoring.drift import label_psi, length_psi
from tasks.records import QUARANTINE_SCHEMA, RECORD_COLUMNS, RECORD_SCHEMA, read_rows, write_parquet
from tasks.snapshots import prior_snapshots
from tasks.store import ArtifactStore, digest_path
from tasks.tracking import log_dataset, log_manifest, step_run

STEP = "validate"
log = logging.getLogger("freshet.validate")
FAILED_STEP = "validate.failed"
# Position in records.parquet: names a row even when its id is null or duplicated.
ROW_NUMBER = "row_number"
RESULT_FORMAT = {"result_format": "COMPLETE", "unexpected_index_column_names": ["id", ROW_NUMBER]}
COLUMNS_EXPECTATION = "expect_table_columns_to_match_set"
UNIQUE_TEXTS_EXPECTATION = "expect_column_proportion_of_unique_values_to_be_between"
# Derived in pandas before validation; GX checks it like any column, so failing ids come from GX.
PRINTABLE_RATIO = "printable_ratio"
EXAMPLE_IDS = 5
# Shuffles the capped reference sample reproducibly.
REFERENCE_SEED = 0


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


def printable_ratio(text: str | None) -> float | None:
    """Share of printable characters; U+FFFD counts as unprintable (it is what undecodable bytes become)."""
    if not isinstance(text, str):  # null (pandas may hand it over as NaN)
        return None
    if not text:
        return 1.0
    printable = sum(char.isprintable() and char != "\ufffd" or char in "\t\n\r" for char in text)
    return printable / len(text)


def build_expectations(config: PipelineConfig) -> list[Any]:
    """The suite, derived from the config: schema, non-null keys, unique ids, text length, printable
    ratio, known labels, and the batch's share of unique texts."""
    expectations = _import_great_expectations().expectations
    bounds = config.validate_
    return [
        # Extra columns are tolerated (and dropped from the output); missing ones reject the batch.
        expectations.ExpectTableColumnsToMatchSet(column_set=list(RECORD_COLUMNS), exact_match=False),
        *(expectations.ExpectColumnValuesToNotBeNull(column=column) for column in ("id", "text", "label")),
        expectations.ExpectColumnValuesToBeUnique(column="id"),
        expectations.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=bounds.min_text_chars, max_value=bounds.max_text_chars),
        expectations.ExpectColumnValuesToBeBetween(
            column=PRINTABLE_RATIO, min_value=bounds.min_printable_ratio, max_value=1.0),
        # new_labels=extend: any label is welcome (it joins the label set), so there is no set to check against.
        *([] if bounds.new_labels == "extend" else [
            expectations.ExpectColumnValuesToBeInSet(column="label", value_set=list(config.labels))]),
        # Batch-level: duplicate fraction = 1 - unique proportion (of non-null texts).
        expectations.ExpectColumnProportionOfUniqueValuesToBeBetween(
            column="text", min_value=1.0 - bounds.max_duplicate_fraction, max_value=1.0),
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
    if outcome.column == PRINTABLE_RATIO:
        return (f"text has a printable-character ratio of {printable_ratio(row.get('text')):.3f}, "
                f"below validate.min_printable_ratio={config.validate_.min_printable_ratio}")
    return f"failed {outcome.name}"


def missing_columns(outcome: ExpectationOutcome) -> list[str]:
    return sorted(set(RECORD_COLUMNS) - set(outcome.observed or ()))


def quarantined_rows_of(outcome: ExpectationOutcome, rows: Sequence[Mapping[str, Any]],
                        first_row_of_id: Mapping[Any, int]) -> list[int]:
    if outcome.expectation == COLUMNS_EXPECTATION:
        # Without the record schema no row can be used.
        return [] if outcome.success else list(range(len(rows)))
    if outcome.expectation == UNIQUE_TEXTS_EXPECTATION:
        return []  # a batch-level check: it rejects the batch, it quarantines no row
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
            if outcome.column == PRINTABLE_RATIO:
                value = f"{printable_ratio(row.get('text')):.3f}"
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


# ---------------------------------------------------------------------------- batch-level checks


def problem_of(check: Check) -> str:
    """A failed batch check, as the rejection says it."""
    return f"{check.name} {check.value:.3f} > validate.{check.setting}={check.bound}" + (
        f" ({check.detail})" if check.detail else "")


@dataclass(frozen=True)
class Reference:
    """The profile of accepted data that a batch's distributions are compared with."""

    labels: list[str]
    lengths: np.ndarray
    snapshots: list[str]  # run ids read


def load_reference(store: ArtifactStore, snapshots: Sequence[Mapping[str, Any]], max_rows: int) -> Reference | None:
    """Labels and text lengths of the accepted history, most recent snapshots first, capped at `max_rows`."""
    labels: list[str] = []
    lengths: list[int] = []
    used: list[str] = []
    for snapshot in reversed(snapshots):
        if len(labels) >= max_rows:
            break
        try:
            table = pq.read_table(store.local_path(snapshot["uri"]), columns=["text", "label"])
        except FileNotFoundError as error:
            raise StepError(f"{STEP}: snapshot of run {snapshot['run_id']!r} is listed in the history "
                            f"but missing at {snapshot['uri']}") from error
        texts, snapshot_labels = table.column("text").to_pylist(), table.column("label").to_pylist()
        room = max_rows - len(labels)
        if len(texts) > room:  # sample the oldest snapshot read, rather than take its first rows
            keep = np.sort(np.random.default_rng(REFERENCE_SEED).choice(len(texts), size=room, replace=False))
            texts, snapshot_labels = [texts[i] for i in keep], [snapshot_labels[i] for i in keep]
        labels.extend(snapshot_labels)
        lengths.extend(len(text) for text in texts)
        used.append(snapshot["run_id"])
    if not labels:
        return None
    return Reference(labels=labels, lengths=np.asarray(lengths), snapshots=used)


def drift_checks(valid: Sequence[Mapping[str, Any]], reference: Reference | None,
                 config: PipelineConfig, has_schema: bool = True) -> list[Check]:
    bounds = config.validate_
    checks = (("drift.label_psi", "max_label_psi", bounds.max_label_psi),
              ("drift.length_psi", "max_length_psi", bounds.max_length_psi))
    skipped_because = (
        "the batch lacks record columns" if not has_schema
        else "no accepted history yet (first run)" if reference is None
        else f"{len(valid)} valid rows < validate.drift_min_rows={bounds.drift_min_rows}"
        if len(valid) < bounds.drift_min_rows else None)
    if skipped_because or reference is None:
        return [skipped(name, None, bound, "<=", skipped_because or "", setting=setting)
                for name, setting, bound in checks]
    batch_labels = [row["label"] for row in valid]
    new_note = ""
    if bounds.new_labels == "extend":
        # A label joining the set is a decision the config already made, not drift: PSI over the known ones.
        known = set(reference.labels)
        new = sorted({label for label in batch_labels if label not in known})
        if new:
            batch_labels = [label for label in batch_labels if label in known]
            new_note = f"; new labels {new} (validate.new_labels=extend) left out of the label PSI"
    observed = {
        "drift.label_psi": label_psi(reference.labels, batch_labels),
        "drift.length_psi": length_psi(reference.lengths, np.asarray([len(row["text"]) for row in valid]),
                                       bounds.drift_length_bins),
    }
    detail = f"{len(valid)} valid rows vs {len(reference.labels)} reference rows{new_note}"
    return [judge(name, observed[name], bound, "<=", detail, setting=setting) for name, setting, bound in checks]


def duplicate_check(outcomes: Sequence[ExpectationOutcome], config: PipelineConfig, rows: int) -> Check:
    bound = config.validate_.max_duplicate_fraction
    outcome = next((item for item in outcomes if item.expectation == UNIQUE_TEXTS_EXPECTATION), None)
    # GX observes a unique proportion of 0 for an empty column: no rows, no duplicates.
    if outcome is None or outcome.observed is None or rows == 0:
        return skipped("duplicate_fraction", None, bound, "<=", "no text column or no texts",
                       setting="max_duplicate_fraction")
    # Great Expectations judged it (expect ... unique proportion >= 1 - bound): its success is the verdict.
    return Check(name="duplicate_fraction", value=1.0 - float(outcome.observed), bound=bound, comparison="<=",
                 verdict="passed" if outcome.success else "failed", setting="max_duplicate_fraction",
                 detail=f"{UNIQUE_TEXTS_EXPECTATION}(text) observed unique proportion {float(outcome.observed):.3f}")


# ---------------------------------------------------------------------------------------- report

REPORT_FILE = "validation_report.html"
# Expectation kwargs that are bounds (everything else, like result_format, is plumbing).
BOUND_KWARGS = ("min_value", "max_value", "value_set", "column_set", "exact_match", "mostly")
REPORT_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}"
                "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;"
                "text-align:left;vertical-align:top}th{background:#f3f3f3}.passed{color:#1a7f37}"
                ".failed{color:#cf222e;font-weight:bold}.skipped{color:#777}code{font-size:90%}")


def _cell(value: Any) -> str:
    if value is None:
        return "&mdash;"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return html.escape(text)


def _status(status: str) -> str:
    return f'<span class="{status}">{status}</span>'


def _row_name(rows: Sequence[Mapping[str, Any]], number: int) -> str:
    record_id = rows[number].get("id") if number < len(rows) else None
    return f"row {number} (null id)" if record_id is None else str(record_id)


def render_report(result: Mapping[str, Any], failures: Sequence[Failure], rows: Sequence[Mapping[str, Any]],
                  checks: Sequence[Check], metrics: Mapping[str, Any], problems: Sequence[str], *,
                  run_id: str, config: PipelineConfig) -> str:
    """A self-contained HTML page (no scripts, no remote styles, so it opens offline and in MLflow's viewer):
    the verdict, every expectation with its bounds, observed value and quarantined row ids, the batch checks.

    GX's own Data Docs pages load bootstrap/jQuery/vega from CDNs and cannot show our batch checks, hence our own.
    """
    quarantined = {(outcome.expectation, outcome.column): numbers for outcome, numbers in failures}
    verdict = "rejected" if problems else "accepted"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(config.name)} validate {html.escape(run_id)}: {verdict}</title>",
        f"<style>{REPORT_STYLE}</style></head><body>",
        (f"<h1>Validation of run <code>{html.escape(run_id)}</code>: "
        f'<span class="{"failed" if problems else "passed"}">{verdict}</span></h1>'),
        "<p>" + ", ".join(f"{name.replace('_', ' ')}: <b>{_cell(metrics.get(name))}</b>" for name in (
            "rows_in", "rows_valid", "rows_quarantined", "rows_quarantined_by_crawl", "quarantine_fraction")) + "</p>",
    ]
    if problems:
        parts.append("<h2>Why the batch was rejected</h2><ul>"
                     + "".join(f"<li>{html.escape(problem)}</li>" for problem in problems) + "</ul>")
    parts.append(f"<h2>Expectations (Great Expectations suite <code>{html.escape(config.name)}.records</code>)</h2>"
                 "<table><tr><th>expectation</th><th>column</th><th>bounds</th><th>observed</th><th>success</th>"
                 "<th>quarantined rows</th></tr>")
    for item in result.get("results", []):
        configuration = item["expectation_config"]
        kwargs = configuration.get("kwargs", {})
        details = item.get("result") or {}
        bounds = {key: kwargs[key] for key in BOUND_KWARGS if kwargs.get(key) is not None}
        if "observed_value" in details:
            observed = _cell(details["observed_value"])
        elif "unexpected_count" in details:
            observed = (f"{details['unexpected_count']} of {details.get('element_count')} unexpected "
                        f"({_cell(details.get('unexpected_percent'))}%)")
        else:
            observed = _cell(None)
        exception = item.get("exception_info") or {}
        if exception.get("raised_exception"):
            observed += f"<br>error: {html.escape(str(exception.get('exception_message')))}"
        numbers = quarantined.get((configuration["type"], kwargs.get("column")), [])
        ids = ", ".join(html.escape(_row_name(rows, number)) for number in numbers)
        listed = (f"<details><summary>{len(numbers)} rows</summary><code>{ids}</code></details>" if numbers
                  else "0")
        parts.append(f"<tr><td>{html.escape(configuration['type'])}</td><td>{_cell(kwargs.get('column'))}</td>"
                     f"<td>{'<br>'.join(f'{key}={_cell(value)}' for key, value in bounds.items()) or _cell(None)}</td>"
                     f"<td>{observed}</td><td>{_status('passed' if item['success'] else 'failed')}</td>"
                     f"<td>{listed}</td></tr>")
    parts.append("</table><h2>Batch checks</h2><table><tr><th>check</th><th>bound</th><th>observed</th>"
                 "<th>status</th><th>detail</th></tr>")
    for check in checks:
        parts.append(f"<tr><td>{html.escape(check.name)}</td><td>validate.{check.setting} = {_cell(check.bound)}</td>"
                     f"<td>{_cell(check.value)}</td><td>{_status(check.verdict)}</td>"
                     f"<td>{html.escape(check.detail)}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


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


def persist_rejected_batch(context: StepContext, quarantine_table: pa.Table, result: Mapping[str, Any],
                           metrics: Mapping[str, Any], message: str, report: str) -> str:
    """Keep what a rejected batch produced under `runs/<run_id>/validate.failed/` (its own manifest last)."""
    store = context.store
    with store.staging(context.run_id, FAILED_STEP) as staged:
        write_parquet(quarantine_table, staged / "quarantine.parquet")
        (staged / "gx_result.json").write_text(json.dumps(result, indent=2, allow_nan=False))
        (staged / REPORT_FILE).write_text(report)
        outputs = {
            name: ArtifactRef(uri=store.step_uri(context.run_id, FAILED_STEP, file), kind=kind,
                              digest=digest_path(staged / file), rows=rows)
            for name, file, kind, rows in (("quarantine", "quarantine.parquet", "dataset", quarantine_table.num_rows),
                                           ("gx_result", "gx_result.json", "report", None),
                                           ("validation_report", REPORT_FILE, "report", None))
        }
        inputs = {name: manifest.fingerprint for name, manifest in context.inputs.items()}
        manifest = Manifest(
            step=FAILED_STEP, run_id=context.run_id, uri=store.step_uri(context.run_id, FAILED_STEP, "manifest.json"),
            fingerprint=digest_json({"step": FAILED_STEP, "inputs": inputs, "config": context.config.section_hash(STEP)}),
            config_hash=context.config.config_hash, logical_date=context.logical_date, inputs=inputs, outputs=outputs,
            metrics=dict(metrics), facts={"error": message}, created_at=dt.datetime.now(dt.UTC).isoformat(),
        )
        (staged / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        store.commit(staged, context.run_id, FAILED_STEP)
    return store.step_uri(context.run_id, FAILED_STEP)


def batch_problems(outcomes: Sequence[ExpectationOutcome], metrics: Mapping[str, Any], config: PipelineConfig,
                   rows: Sequence[Mapping[str, Any]] = (), checks: Sequence[Check] = (),
                   allow_empty: bool = False) -> list[str]:
    """Why the batch as a whole is rejected; empty when it passes. `allow_empty`: a batch of no rows at all passes
    (a forced retry after a fix brings nothing new; the rows it trains were accepted before)."""
    problems = []
    if config.validate_.new_labels == "reject":
        unknown = [rows[number].get("label") for outcome in outcomes
                   if outcome.expectation == "expect_column_values_to_be_in_set" for number in outcome.failing_rows]
        if unknown:
            problems.append(f"unknown labels {sorted(set(map(str, unknown)))} in {len(unknown)} rows "
                            f"(validate.new_labels=reject; add them to labels or set new_labels=quarantine)")
    problems.extend(problem_of(check) for check in failed(checks))
    for outcome in outcomes:
        if outcome.expectation == COLUMNS_EXPECTATION and not outcome.success:
            problems.append(f"{COLUMNS_EXPECTATION}: missing columns {missing_columns(outcome)}")
        elif outcome.error:
            problems.append(f"{outcome.name} could not be evaluated: {outcome.error}")
    if metrics["rows_in"] < config.validate_.min_rows and not (allow_empty and metrics["rows_in"] == 0):
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
        logical_date: str | None = None, allow_empty: bool = False) -> Manifest:
    """`allow_empty`: accept a batch of no rows (the DAG sets it in a forced run, whose crawl may find nothing)."""
    # The drift reference is accepted history, so it is an input: a new snapshot recomputes the step.
    snapshots = prior_snapshots(store, run_id, logical_date)
    stranded = stranded_batches(store, run_id, inputs["crawl"])

    def body(context: StepContext) -> None:
        crawl = context.input("crawl")
        table, extra_columns = read_batches(context, store, stranded)
        context.facts["inbox_batches"] = [{key: entry[key] for key in ("run_id", "logical_date", "rows", "digest")}
                                          for entry in stranded]
        rows = table.to_pylist()
        result, outcomes = check_expectations(table, config)
        quarantined, failures = quarantine_rows(outcomes, rows, config)
        quarantined_numbers = {number for _, numbers in failures for number in numbers}
        valid = [row for number, row in enumerate(rows) if number not in quarantined_numbers]
        carried = carried_quarantine(context, store, crawl, stranded)
        quarantine_table = pa.Table.from_pylist(carried + quarantined, schema=QUARANTINE_SCHEMA)

        checks, reference = batch_checks(config, store, snapshots, outcomes, valid, len(rows))
        result["freshet_batch_checks"] = json_safe([check.model_dump() for check in checks])
        context.facts["batch_checks"] = result["freshet_batch_checks"]
        context.facts["drift_reference"] = {"snapshots": reference.snapshots if reference else [],
                                        "rows": len(reference.labels) if reference else 0}

        context.metrics.update(batch_metrics(rows, valid, quarantined_numbers, carried, stranded, outcomes, failures,
                                             checks))
        problems = batch_problems(outcomes, context.metrics, config, rows, checks, allow_empty)
        report = render_report(result, failures, rows, checks, context.metrics, problems, run_id=run_id, config=config)
        if problems:
            message = (f"batch rejected: {'; '.join(problems)}. "
                       f"Failed expectations: {describe_failures(failures, rows)}.")
            failed_uri = persist_rejected_batch(context, quarantine_table, result, context.metrics, message, report)
            raise BatchRejected(f"{message} Quarantine and GX result kept in {failed_uri}", failed_uri)

        write_accepted(context, valid, quarantine_table, result, report)
        context.facts["failed_expectations"] = {outcome.name: len(numbers) for outcome, numbers in failures}
        if config.validate_.new_labels == "extend":
            labels, new = grown_labels(config, store, snapshots, valid)
            context.facts.update({"labels": labels, "labels_new": new})
            context.metrics["labels_new"] = len(new)
        if extra_columns:
            context.facts["ignored_columns"] = extra_columns

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


def check_expectations(table: pa.Table, config: PipelineConfig) -> tuple[dict[str, Any], list[ExpectationOutcome]]:
    """The GX suite run over the batch (each row numbered, with its printable ratio): its result and outcomes."""
    frame = table.to_pandas()
    frame[ROW_NUMBER] = np.arange(len(frame), dtype=np.int64)
    if "text" in frame.columns:
        frame[PRINTABLE_RATIO] = pd.Series([printable_ratio(text) for text in frame["text"]],
                                           index=frame.index, dtype="float64")
    result = run_expectations(frame, config)
    return result, outcomes_of(result)


def carried_quarantine(context: StepContext, store: ArtifactStore, crawl: Manifest,
                       stranded: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows the crawls of this batch and of the stranded ones quarantined already."""
    carried = upstream_quarantine(
        context.input_path("crawl", "quarantine") if "quarantine" in crawl.outputs else None)
    for entry in stranded:
        carried += upstream_quarantine(store.local_path(entry["quarantine"]) if entry["quarantine"] else None)
    return carried


def batch_checks(config: PipelineConfig, store: ArtifactStore, snapshots: Sequence[Mapping[str, Any]],
                 outcomes: Sequence[ExpectationOutcome],
                 valid: Sequence[Mapping[str, Any]], batch_rows: int) -> tuple[list[Check], Reference | None]:
    """The duplicate and drift checks of the batch (of `batch_rows` rows), and the reference the drift is measured
    against."""
    has_schema = all(outcome.success for outcome in outcomes if outcome.expectation == COLUMNS_EXPECTATION)
    reference = load_reference(store, snapshots, config.validate_.drift_reference_max_rows) if (
        has_schema and snapshots) else None
    return ([duplicate_check(outcomes, config, batch_rows), *drift_checks(valid, reference, config, has_schema)],
            reference)


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
