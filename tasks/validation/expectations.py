"""The Great Expectations adapter: the suite derived from the config, run over a batch in an ephemeral
(in-memory, offline) context, and its result reduced to one `ExpectationOutcome` per expectation.

Row-level expectations name their failing rows by `row_number` (the position in records.parquet, which names a
row even when its id is null or duplicated); the printable-character ratio is derived in pandas first, so GX
checks it like any column.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.config import PipelineConfig
from tasks.records import RECORD_COLUMNS
from tasks.validation import STEP

# Position in records.parquet: names a row even when its id is null or duplicated.
ROW_NUMBER = "row_number"
RESULT_FORMAT = {"result_format": "COMPLETE", "unexpected_index_column_names": ["id", ROW_NUMBER]}
COLUMNS_EXPECTATION = "expect_table_columns_to_match_set"
UNIQUE_TEXTS_EXPECTATION = "expect_column_proportion_of_unique_values_to_be_between"
# Derived in pandas before validation; GX checks it like any column, so failing ids come from GX.
PRINTABLE_RATIO = "printable_ratio"


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


def missing_columns(outcome: ExpectationOutcome) -> list[str]:
    """The record columns the batch lacks, from the outcome of the columns expectation."""
    return sorted(set(RECORD_COLUMNS) - set(outcome.observed or ()))


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


def check_expectations(table: pa.Table, config: PipelineConfig) -> tuple[dict[str, Any], list[ExpectationOutcome]]:
    """The GX suite run over the batch (each row numbered, with its printable ratio): its result and outcomes."""
    frame = table.to_pandas()
    frame[ROW_NUMBER] = np.arange(len(frame), dtype=np.int64)
    if "text" in frame.columns:
        frame[PRINTABLE_RATIO] = pd.Series([printable_ratio(text) for text in frame["text"]],
                                           index=frame.index, dtype="float64")
    result = run_expectations(frame, config)
    return result, outcomes_of(result)
