"""`validation_report.html`: a self-contained page (no scripts, no remote styles, so it opens offline and in
MLflow's viewer) with the verdict, every expectation with its bounds, observed value, success and quarantined
row ids, and the batch checks. GX's own Data Docs pages load bootstrap/jQuery/vega from CDNs and cannot show our
batch checks, hence our own.

The page is the Jinja template `report.html.j2` beside this module (autoescaped: every value from the batch is
escaped); this module only shapes the values it shows.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

from tasks.checks import Check
from tasks.config import PipelineConfig
from tasks.validation.quarantine import Failure

REPORT_FILE = "validation_report.html"
TEMPLATE = "report.html.j2"
# Expectation kwargs that are bounds (everything else, like result_format, is plumbing).
BOUND_KWARGS = ("min_value", "max_value", "value_set", "column_set", "exact_match", "mostly")
# The counts at the top of the page, from the step's metrics.
SUMMARY_METRICS = ("rows_in", "rows_valid", "rows_quarantined", "rows_quarantined_by_crawl", "quarantine_fraction")


def cell(value: Any) -> str:
    """A table cell's text: a dash for nothing, four significant digits for a float, JSON for a structure."""
    if value is None:
        return Markup("&mdash;")
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value, default=str)


@functools.cache
def template() -> jinja2.Template:
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                     lstrip_blocks=True)
    environment.filters["cell"] = cell
    return environment.from_string(resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class ExpectationRow:
    """One expectation of the GX result, as the page shows it."""

    expectation: str
    column: str | None
    bounds: dict[str, Any]
    observed: Any
    # (unexpected, of, percent) where GX counted unexpected values rather than observing one.
    unexpected: tuple[Any, Any, Any] | None
    error: str | None  # the exception GX raised evaluating it
    success: bool
    quarantined: list[str]  # the quarantined rows' ids


def row_name(rows: Sequence[Mapping[str, Any]], number: int) -> str:
    record_id = rows[number].get("id") if number < len(rows) else None
    return f"row {number} (null id)" if record_id is None else str(record_id)


def expectation_rows(result: Mapping[str, Any], failures: Sequence[Failure],
                     rows: Sequence[Mapping[str, Any]]) -> list[ExpectationRow]:
    quarantined = {(outcome.expectation, outcome.column): numbers for outcome, numbers in failures}
    shown = []
    for item in result.get("results", []):
        configuration = item["expectation_config"]
        kwargs = configuration.get("kwargs", {})
        details = item.get("result") or {}
        exception = item.get("exception_info") or {}
        counted = "observed_value" not in details and "unexpected_count" in details
        shown.append(ExpectationRow(
            expectation=configuration["type"],
            column=kwargs.get("column"),
            bounds={key: kwargs[key] for key in BOUND_KWARGS if kwargs.get(key) is not None},
            observed=details.get("observed_value"),
            unexpected=(details["unexpected_count"], details.get("element_count"), details.get("unexpected_percent"))
            if counted else None,
            error=str(exception.get("exception_message")) if exception.get("raised_exception") else None,
            success=bool(item["success"]),
            quarantined=[row_name(rows, number)
                         for number in quarantined.get((configuration["type"], kwargs.get("column")), [])],
        ))
    return shown


def render_report(result: Mapping[str, Any], failures: Sequence[Failure], rows: Sequence[Mapping[str, Any]],
                  checks: Sequence[Check], metrics: Mapping[str, Any], problems: Sequence[str], *,
                  run_id: str, config: PipelineConfig) -> str:
    """The page: the verdict, every expectation with its bounds, observed value and quarantined row ids, the
    batch checks."""
    return template().render(
        pipeline=config.name, run_id=run_id, verdict="rejected" if problems else "accepted", problems=problems,
        summary=[(name.replace("_", " "), metrics.get(name)) for name in SUMMARY_METRICS],
        expectations=expectation_rows(result, failures, rows), checks=checks)
