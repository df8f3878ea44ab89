"""The quarantine: the rows that failed an expectation, one quarantine row per failed expectation (a row failing
two checks appears twice), each naming the check, the field, the value and why; and the rows the crawl
quarantined already, carried along so the step's quarantine is complete. Duplicate ids keep their first
occurrence in crawl order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks.config import PipelineConfig
from tasks.contract import StepContext
from tasks.manifest import Manifest
from tasks.records import QUARANTINE_SCHEMA, read_rows
from tasks.store import ArtifactStore
from tasks.validation import STEP
from tasks.validation.expectations import (
    COLUMNS_EXPECTATION,
    PRINTABLE_RATIO,
    UNIQUE_TEXTS_EXPECTATION,
    ExpectationOutcome,
    missing_columns,
    printable_ratio,
)

EXAMPLE_IDS = 5

# An expectation that failed and the row numbers it quarantined.
Failure = tuple[ExpectationOutcome, list[int]]


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


def carried_quarantine(context: StepContext, store: ArtifactStore, crawl: Manifest,
                       stranded: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows the crawls of this batch and of the stranded ones quarantined already."""
    carried = upstream_quarantine(
        context.input_path("crawl", "quarantine") if "quarantine" in crawl.outputs else None)
    for entry in stranded:
        carried += upstream_quarantine(store.local_path(entry["quarantine"]) if entry["quarantine"] else None)
    return carried


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
