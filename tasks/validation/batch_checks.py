"""The checks of a batch as a whole, and the reasons a batch is rejected.

Checks (one `Check` each): the duplicate-text fraction (judged by GX), and drift of the valid rows against a
reference profile of the accepted history: the population stability index (PSI) of the label distribution and
of the text-length distribution (bins at the reference's quantiles). Drift is skipped, and reported so, on the
first run (no history) and for batches smaller than `validate.drift_min_rows`. A batch is rejected on a failed
check, missing record columns, an expectation that could not be evaluated, too few rows, too large a quarantined
fraction, or unknown labels when `validate.new_labels` is `reject`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tasks.checks import Check, failed, judge, skipped
from tasks.config import PipelineConfig
from tasks.manifest import StepError
from tasks.monitoring.drift import label_psi, length_psi
from tasks.store import ArtifactStore
from tasks.validation import STEP
from tasks.validation.expectations import (
    COLUMNS_EXPECTATION,
    UNIQUE_TEXTS_EXPECTATION,
    ExpectationOutcome,
    missing_columns,
)

# Shuffles the capped reference sample reproducibly.
REFERENCE_SEED = 0


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
