"""The gate policy, applied to evaluation results: pure functions, no I/O.

Each check (tasks.checks.Check) reports its value, bound and verdict; a rejection is a normal outcome with reasons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel

from tasks.checks import Check, Comparison, failed, judge, measurable, meets, skipped
from tasks.config import GatePolicy

SliceMetrics = Mapping[str, Mapping[str, Any]]  # slice name -> metrics (macro_f1, accuracy, ...)


class Verdict(BaseModel):
    passed: bool
    checks: list[Check]

    @property
    def reasons(self) -> list[str]:
        return [check.detail for check in failed(self.checks)]

    def summary(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons, "checks": [check.model_dump() for check in self.checks]}

    def facts(self) -> GateFacts:
        return GateFacts(passed=self.passed, reasons=self.reasons, checks=self.checks)


class GateFacts(BaseModel):
    """The gate's verdict as a manifest fact (evaluate's; compress's adds the serving variant)."""

    passed: bool
    reasons: list[str]
    checks: list[Check]
    serving_variant: str | None = None

    def verdict(self) -> Verdict:
        return Verdict(passed=self.passed, checks=self.checks)


def _check(name: str, value: Any, bound: float, comparison: Comparison, what: str) -> Check:
    if not measurable(value):
        return skipped(name, None, bound, comparison, f"{what}: not measurable on this run (empty slice)")
    return judge(name, value, bound, comparison,
                 f"{what}: {value:.4f} {'meets' if meets(value, bound, comparison) else 'violates'} {comparison} "
                 f"{bound:.4f}")


def _metric(metrics: SliceMetrics, dotted: str) -> Any:
    slice_name, _, metric = dotted.partition(".")
    return metrics.get(slice_name, {}).get(metric) if metrics.get(slice_name, {}).get("rows", 1) else None


class PairedComparison(BaseModel):
    """Candidate vs champion on the same rows: bootstrap interval of the difference and McNemar's test."""

    metric: str
    rows: int
    candidate: float
    champion: float
    difference: float  # candidate - champion on all rows
    ci_low: float
    ci_high: float
    confidence: float
    resamples: int
    seed: int
    candidate_only_correct: int  # McNemar discordant pairs
    champion_only_correct: int
    mcnemar_p_value: float


def _resampled_metric(weights: np.ndarray, truth: np.ndarray, predicted: np.ndarray, num_labels: int,
                      metric: str) -> np.ndarray:
    """The metric under each row of `weights` (resample x row multiplicities), without re-indexing rows.

    Macro-F1 averages over the classes present in each resample, like `classification_metrics`.
    """
    correct = (truth == predicted).astype(np.float64)
    if metric == "accuracy":
        return weights @ correct / weights.sum(axis=1)
    classes = np.arange(num_labels)
    truth_hot = (truth[:, None] == classes).astype(np.float64)  # rows x classes
    predicted_hot = (predicted[:, None] == classes).astype(np.float64)
    support = weights @ truth_hot
    true_positive = weights @ (truth_hot * correct[:, None])
    denominator = support + weights @ predicted_hot
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    present = support > 0
    return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


BOOTSTRAP_METRICS = ("macro_f1", "accuracy")


def compare_paired(truth: Sequence[int], candidate: Sequence[int], champion: Sequence[int], num_labels: int, *,
                   metric: str = "macro_f1", resamples: int = 1000, confidence: float = 0.95,
                   seed: int = 0) -> PairedComparison:
    """Paired bootstrap (percentile) interval of candidate - champion, and exact McNemar's test.

    Both models are scored on the same resampled rows, so row difficulty cancels out. Vectorised:
    each resample is a row of multinomial counts applied as weights, no Python loop.
    """
    from scipy.stats import binomtest

    if metric not in BOOTSTRAP_METRICS:
        raise ValueError(f"paired bootstrap supports {BOOTSTRAP_METRICS}, not {metric!r}")
    truth_array, candidate_array, champion_array = (np.asarray(values, dtype=np.int64)
                                                    for values in (truth, candidate, champion))
    rows = truth_array.size
    if rows == 0 or candidate_array.size != rows or champion_array.size != rows:
        raise ValueError(f"paired comparison needs equal, non-empty predictions: {rows}, "
                         f"{candidate_array.size}, {champion_array.size}")
    # Both metrics depend on the rows only through the counts of (truth, candidate, champion) triples,
    # so a bootstrap resample is a multinomial draw over the distinct triples (same distribution as
    # drawing rows, far fewer categories).
    triples, counts = np.unique(np.stack([truth_array, candidate_array, champion_array], axis=1), axis=0,
                                return_counts=True)
    cell_truth, cell_candidate, cell_champion = triples.T

    def difference(weights: np.ndarray) -> np.ndarray:
        return (_resampled_metric(weights, cell_truth, cell_candidate, num_labels, metric)
                - _resampled_metric(weights, cell_truth, cell_champion, num_labels, metric))

    observed = counts[None, :].astype(np.float64)
    point_candidate = float(_resampled_metric(observed, cell_truth, cell_candidate, num_labels, metric)[0])
    point_champion = float(_resampled_metric(observed, cell_truth, cell_champion, num_labels, metric)[0])
    generator = np.random.default_rng(seed)
    resampled = difference(generator.multinomial(rows, counts / rows, size=resamples).astype(np.float64))
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    candidate_correct, champion_correct = candidate_array == truth_array, champion_array == truth_array
    only_candidate = int(np.sum(candidate_correct & ~champion_correct))
    only_champion = int(np.sum(champion_correct & ~candidate_correct))
    discordant = only_candidate + only_champion
    p_value = 1.0 if discordant == 0 else float(binomtest(only_candidate, discordant, 0.5).pvalue)
    return PairedComparison(metric=metric, rows=rows, candidate=point_candidate, champion=point_champion,
                            difference=point_candidate - point_champion, ci_low=float(low), ci_high=float(high),
                            confidence=confidence, resamples=resamples, seed=seed,
                            candidate_only_correct=only_candidate, champion_only_correct=only_champion,
                            mcnemar_p_value=p_value)


def _class_f1_drop(policy: GatePolicy, slice_name: str, candidate: Mapping[str, Any],
                   champion: Mapping[str, Any], new_classes: Sequence[str] = ()) -> Check | None:
    # A class the champion never had is no regression whatever its F1: it is reported as new instead.
    drops = {label: champion_class["f1"] - candidate.get("per_class", {}).get(label, {}).get("f1", 0.0)
             for label, champion_class in champion.get("per_class", {}).items()
             if champion_class.get("support", 0) >= policy.min_class_support and label not in new_classes}
    if not drops or policy.max_class_f1_drop is None:
        return None
    worst = max(drops, key=lambda label: drops[label])
    return _check(f"max_class_f1_drop:{slice_name}", drops[worst], policy.max_class_f1_drop, "<=",
                  f"largest per-class F1 drop vs champion on {slice_name} (class {worst}, "
                  f"support >= {policy.min_class_support})")


def _champion_checks(policy: GatePolicy, candidate: SliceMetrics, champion: SliceMetrics,
                     paired: Mapping[str, PairedComparison], new_classes: Sequence[str]) -> list[Check]:
    """Non-inferiority, per-class drop per slice, and forgetting on the old slice, against the champion."""
    metric, checks = policy.primary_metric, []
    for slice_name in sorted(set(candidate) & set(champion)):
        champion_value = champion[slice_name].get(metric)
        if not measurable(champion_value):
            continue
        rows = candidate[slice_name].get("rows", 0)
        if rows < policy.min_comparison_rows:
            # A handful of rows says nothing about non-inferiority: report, don't judge.
            checks.append(_too_few_rows(policy, f"non_inferiority:{slice_name}.{metric}",
                                        -policy.non_inferiority_margin, ">=", slice_name, rows, "champion"))
            continue
        comparison = paired.get(slice_name)
        if comparison is not None and comparison.metric == metric:
            checks.append(_check(
                f"non_inferiority:{slice_name}.{metric}", comparison.ci_low, -policy.non_inferiority_margin, ">=",
                f"{slice_name}.{metric} candidate - champion {comparison.difference:+.4f}, "
                f"{comparison.confidence:.0%} CI [{comparison.ci_low:+.4f}, {comparison.ci_high:+.4f}], "
                f"lower bound vs -margin",
            ))
        else:
            checks.append(_check(
                f"non_inferiority:{slice_name}.{metric}", candidate[slice_name].get(metric),
                champion_value - policy.non_inferiority_margin, ">=",
                f"candidate {slice_name}.{metric} vs champion {champion_value:.4f} - margin {policy.non_inferiority_margin}",
            ))
        if policy.max_class_f1_drop is not None:
            check = _class_f1_drop(policy, slice_name, candidate[slice_name], champion[slice_name], new_classes)
            if check is not None:
                checks.append(check)
    if policy.max_forgetting is not None and "old" in candidate and "old" in champion:
        name, rows = f"max_forgetting:old.{metric}", candidate["old"].get("rows", 0)
        if 0 < rows < policy.min_comparison_rows:
            checks.append(_too_few_rows(policy, name, policy.max_forgetting, "<=", "old", rows, "champion"))
            return checks
        before, after = champion["old"].get(metric), candidate["old"].get(metric)
        forgetting = before - after if measurable(before) and measurable(after) else None
        checks.append(_check(name, forgetting, policy.max_forgetting, "<=",
                             f"forgetting on old slice (champion - candidate {metric})"))
    return checks


class BestScore(BaseModel):
    """The best primary metric any champion (past or present) scored on the frozen slice, and which version."""

    value: float
    version: str


def _too_few_rows(policy: GatePolicy, name: str, bound: float, comparison: Comparison, slice_name: str,
                  rows: int, against: str) -> Check:
    # One rule for every comparison on a slice too small for a useful interval: reported, not judged.
    return skipped(name, None, bound, comparison,
                   f"{slice_name}: {rows} rows < gate.min_comparison_rows={policy.min_comparison_rows}, "
                   f"too few to compare with the {against}")


def _new_class_checks(policy: GatePolicy, candidate: SliceMetrics, new_classes: Sequence[str]) -> list[Check]:
    """A class the champion never had is judged on its own rows: the candidate's F1 on them, per slice, where the
    slice holds enough of them (`min_class_support`)."""
    checks = []
    for label in new_classes:
        for slice_name in sorted(candidate):
            measured = candidate[slice_name].get("per_class", {}).get(label)
            if not measured or not measured.get("support"):
                continue
            name = f"new_class:{label}:{slice_name}.f1"
            if policy.min_new_class_f1 is None or measured["support"] < policy.min_class_support:
                checks.append(skipped(name, measured["f1"], policy.min_new_class_f1 or 0.0, ">=",
                                      f"new class {label!r} on {slice_name}: F1 {measured['f1']:.4f} on its "
                                      f"{measured['support']} rows (judged from gate.min_class_support="
                                      f"{policy.min_class_support} rows and with gate.min_new_class_f1 set)"))
                continue
            checks.append(_check(name, measured["f1"], policy.min_new_class_f1, ">=",
                                 f"new class {label!r}: candidate F1 on its {measured['support']} {slice_name} rows"))
    return checks


def _baseline_checks(policy: GatePolicy, candidate: SliceMetrics, baseline: Mapping[str, PairedComparison] | None,
                     baseline_skipped: str | None) -> list[Check]:
    """The candidate against the lexical baseline fitted on its own train rows, judged like non-inferiority."""
    if policy.min_gain_over_baseline is None or (baseline is None and baseline_skipped is None):
        return []
    bound = policy.min_gain_over_baseline - policy.non_inferiority_margin
    name = f"over_baseline:{{}}.{policy.primary_metric}"
    if baseline is None:
        return [skipped(name.format("all"), None, bound, ">=", f"no lexical baseline this round: {baseline_skipped}")]
    checks = []
    for slice_name in sorted(candidate):
        rows = candidate[slice_name].get("rows", 0)
        comparison = baseline.get(slice_name)
        if not rows or comparison is None:
            continue
        if rows < policy.min_comparison_rows:
            checks.append(_too_few_rows(policy, name.format(slice_name), bound, ">=", slice_name, rows,
                                        "lexical baseline"))
            continue
        checks.append(_check(
            name.format(slice_name), comparison.ci_low, bound, ">=",
            f"{slice_name}.{comparison.metric} candidate - TF-IDF baseline {comparison.difference:+.4f}, "
            f"{comparison.confidence:.0%} CI [{comparison.ci_low:+.4f}, {comparison.ci_high:+.4f}], lower bound vs "
            f"min_gain_over_baseline - margin"))
    return checks


def judge_candidate(policy: GatePolicy, candidate: SliceMetrics, champion: SliceMetrics | None, *,
                    paired: Mapping[str, PairedComparison] | None = None,
                    latency: Mapping[str, float] | None = None,
                    best_frozen: BestScore | None = None, new_classes: Sequence[str] = (),
                    compared: SliceMetrics | None = None,
                    baseline: Mapping[str, PairedComparison] | None = None,
                    baseline_skipped: str | None = None) -> Verdict:
    """Floors always; with a champion, non-inferiority, per-class drop and forgetting per slice; the lexical
    baseline (`baseline`: paired comparisons of candidate - baseline per slice) when the policy asks for it.

    Non-inferiority is judged on the lower confidence bound of candidate - champion when a paired
    comparison of the slice is given (per-row predictions), else on the point estimates. With
    `best_frozen` and `policy.max_drop_below_best`, the candidate is also held to the best champion so far.
    Every comparison on a slice under `min_comparison_rows` rows is skipped with the reason. `new_classes`
    (labels the champion never had) are judged on their own rows; `compared` is the candidate on the rows of
    the classes the champion knows (`champion` is scored on those too): what every champion comparison reads.
    """
    checks = [_check(f"floor:{key}", _metric(candidate, key), floor, ">=", f"candidate {key} floor")
              for key, floor in sorted(policy.floors.items())]
    if champion is not None and new_classes:
        checks.append(skipped("new_classes", float(len(new_classes)), 0.0, ">=",
                              f"new classes the champion never had, judged on their own rows; the champion "
                              f"comparisons leave their rows out: {', '.join(new_classes)}"))
        checks.extend(_new_class_checks(policy, candidate, new_classes))
    checks.extend(_baseline_checks(policy, candidate, baseline, baseline_skipped))
    metric = policy.primary_metric
    paired = paired or {}
    if champion is not None:
        checks.extend(_champion_checks(policy, compared if compared is not None else candidate, champion, paired,
                                       new_classes))
    if policy.max_drop_below_best is not None and best_frozen is not None:
        after = _metric(candidate, f"frozen.{metric}")
        drop = best_frozen.value - after if measurable(after) else None
        checks.append(_check(f"max_drop_below_best:frozen.{metric}", drop, policy.max_drop_below_best, "<=",
                             f"frozen.{metric} below the best champion so far (version {best_frozen.version},"
                             f" {best_frozen.value:.4f})"))
    if policy.max_latency_ms_batch1_p95 is not None:
        checks.append(_check("latency:batch1_p95_ms", (latency or {}).get("latency_ms_batch1_p95"),
                             policy.max_latency_ms_batch1_p95, "<=", "candidate CPU latency p95 at batch 1 (ms)"))
    if policy.max_ece is not None:
        for slice_name in sorted(candidate):
            checks.append(_check(f"calibration:{slice_name}.ece", candidate[slice_name].get("ece"), policy.max_ece,
                                 "<=", f"candidate expected calibration error on {slice_name}"))
    return Verdict(passed=not failed(checks), checks=checks)



def judge_compressed(policy: GatePolicy, compressed: SliceMetrics, uncompressed: SliceMetrics, variant: str) -> Verdict:
    """The compressed variant may lose at most `max_compressed_drop` of the primary metric per slice."""
    metric = policy.primary_metric
    checks = []
    for slice_name in sorted(set(compressed) & set(uncompressed)):
        before, after = uncompressed[slice_name].get(metric), compressed[slice_name].get(metric)
        drop = before - after if measurable(before) and measurable(after) else None
        checks.append(_check(f"compressed_drop:{variant}:{slice_name}.{metric}", drop, policy.max_compressed_drop, "<=",
                             f"{variant} {slice_name}.{metric} drop vs fp32"))
    return Verdict(passed=not failed(checks), checks=checks)


def final_verdict(candidate: GateFacts, compressed_checks: Sequence[Check], serving_variant: str) -> GateFacts:
    """The verdict the `gate` task reads: the candidate's own (evaluate) with every compressed variant's
    re-gate checks listed beside it. Only the candidate's checks decide: a compressed variant that fails its
    re-gate does not reject the candidate, fp32 is served instead (compress chose `serving_variant`)."""
    return GateFacts(passed=candidate.passed, reasons=candidate.reasons,
                     checks=[*candidate.checks, *compressed_checks], serving_variant=serving_variant)
