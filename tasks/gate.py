"""The gate policy, applied to evaluation results: pure functions, no I/O.

Each check reports its value, threshold and verdict; a rejection is a normal outcome with reasons.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel

from tasks.config import GatePolicy

SliceMetrics = Mapping[str, Mapping[str, Any]]  # slice name -> metrics (macro_f1, accuracy, ...)


class Check(BaseModel):
    name: str
    value: float | None
    threshold: float
    comparison: Literal[">=", "<="]
    verdict: Literal["pass", "fail", "skipped"]
    detail: str


class Verdict(BaseModel):
    passed: bool
    checks: list[Check]

    @property
    def reasons(self) -> list[str]:
        return [check.detail for check in self.checks if check.verdict == "fail"]

    def summary(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons, "checks": [check.model_dump() for check in self.checks]}


def _measurable(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)


def _check(name: str, value: Any, threshold: float, comparison: Literal[">=", "<="], what: str) -> Check:
    if not _measurable(value):
        return Check(name=name, value=None, threshold=threshold, comparison=comparison, verdict="skipped",
                     detail=f"{what}: not measurable on this run (empty slice)")
    ok = value >= threshold if comparison == ">=" else value <= threshold
    return Check(name=name, value=float(value), threshold=threshold, comparison=comparison,
                 verdict="pass" if ok else "fail",
                 detail=f"{what}: {value:.4f} {'meets' if ok else 'violates'} {comparison} {threshold:.4f}")


def _metric(metrics: SliceMetrics, dotted: str) -> Any:
    slice_name, _, metric = dotted.partition(".")
    return metrics.get(slice_name, {}).get(metric) if metrics.get(slice_name, {}).get("rows", 1) else None


def judge_candidate(policy: GatePolicy, candidate: SliceMetrics, champion: SliceMetrics | None) -> Verdict:
    """Floors always; non-inferiority vs the champion on every slice both were scored on."""
    checks = [_check(f"floor:{key}", _metric(candidate, key), floor, ">=", f"candidate {key} floor")
              for key, floor in sorted(policy.floors.items())]
    if champion is not None:
        metric = policy.primary_metric
        for slice_name in sorted(set(candidate) & set(champion)):
            champion_value = champion[slice_name].get(metric)
            if not _measurable(champion_value):
                continue
            checks.append(_check(
                f"non_inferiority:{slice_name}.{metric}", candidate[slice_name].get(metric),
                champion_value - policy.non_inferiority_margin, ">=",
                f"candidate {slice_name}.{metric} vs champion {champion_value:.4f} - margin {policy.non_inferiority_margin}",
            ))
    return Verdict(passed=all(check.verdict != "fail" for check in checks), checks=checks)


def judge_compressed(policy: GatePolicy, compressed: SliceMetrics, uncompressed: SliceMetrics, variant: str) -> Verdict:
    """The compressed variant may lose at most `max_compressed_drop` of the primary metric per slice."""
    metric = policy.primary_metric
    checks = []
    for slice_name in sorted(set(compressed) & set(uncompressed)):
        before, after = uncompressed[slice_name].get(metric), compressed[slice_name].get(metric)
        drop = before - after if _measurable(before) and _measurable(after) else None
        checks.append(_check(f"compressed_drop:{variant}:{slice_name}.{metric}", drop, policy.max_compressed_drop, "<=",
                             f"{variant} {slice_name}.{metric} drop vs fp32"))
    return Verdict(passed=all(check.verdict != "fail" for check in checks), checks=checks)
