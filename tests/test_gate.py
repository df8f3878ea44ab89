"""Gate checks on crafted evaluations, and the paired statistics (bootstrap CI, McNemar): pure, no models."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.config import GatePolicy
from tasks.gate_policy import BestScore, compare_paired, judge_candidate
from tasks.models.metrics import classification_metrics, expected_calibration_error

LABELS = ["a", "b", "c"]


def slice_metrics(truth, predicted, **extra):
    return classification_metrics(truth, predicted, LABELS) | extra


def noisy(truth, accuracy, seed):
    generator = np.random.default_rng(seed)
    wrong = (truth + generator.integers(1, 3, truth.size)) % 3
    return np.where(generator.random(truth.size) < accuracy, truth, wrong)


TRUTH = np.arange(600) % 3


def check(verdict, prefix):
    matches = [item for item in verdict.checks if item.name.startswith(prefix)]
    assert len(matches) == 1, [item.name for item in verdict.checks]
    return matches[0]


def policy(**fields):
    return GatePolicy(floors={"frozen.macro_f1": 0.5}, min_class_support=10, **fields)


@pytest.mark.parametrize(("accuracy", "verdict"), [(0.9, "passed"), (0.3, "failed")])
def test_floor(accuracy, verdict):
    candidate = {"frozen": slice_metrics(TRUTH, noisy(TRUTH, accuracy, 1))}
    result = judge_candidate(policy(), candidate, None)
    assert check(result, "floor:frozen.macro_f1").verdict == verdict
    assert result.passed is (verdict == "passed")


@pytest.mark.parametrize(("candidate_accuracy", "verdict"), [(0.9, "passed"), (0.7, "failed")])
def test_non_inferiority_is_judged_on_the_lower_confidence_bound(candidate_accuracy, verdict):
    champion_predicted, candidate_predicted = noisy(TRUTH, 0.9, 2), noisy(TRUTH, candidate_accuracy, 3)
    paired = {"frozen": compare_paired(TRUTH, candidate_predicted, champion_predicted, 3, resamples=500)}
    result = judge_candidate(policy(non_inferiority_margin=0.02, max_class_f1_drop=None),
                             {"frozen": slice_metrics(TRUTH, candidate_predicted)},
                             {"frozen": slice_metrics(TRUTH, champion_predicted)}, paired=paired)
    item = check(result, "non_inferiority:frozen.macro_f1")
    assert item.verdict == verdict
    assert item.value == pytest.approx(paired["frozen"].ci_low) and item.bound == -0.02


def test_non_inferiority_uses_the_ci_not_the_point_estimate():
    # Same point estimate as the champion, but 40 rows: the CI is wide and its lower bound is below -margin.
    truth = np.arange(40) % 3
    champion_predicted = noisy(truth, 0.8, 4)
    candidate_predicted = np.roll(champion_predicted, 3)  # different rows right, similar score
    paired = {"frozen": compare_paired(truth, candidate_predicted, champion_predicted, 3)}
    assert paired["frozen"].ci_low < -0.02 < paired["frozen"].ci_high
    result = judge_candidate(policy(max_class_f1_drop=None, min_comparison_rows=20),
                             {"frozen": slice_metrics(truth, candidate_predicted)},
                             {"frozen": slice_metrics(truth, champion_predicted)}, paired=paired)
    assert check(result, "non_inferiority:").verdict == "failed"
    too_few = judge_candidate(policy(max_class_f1_drop=None, min_comparison_rows=41),
                              {"frozen": slice_metrics(truth, candidate_predicted)},
                              {"frozen": slice_metrics(truth, champion_predicted)}, paired=paired)
    assert check(too_few, "non_inferiority:").verdict == "skipped" and too_few.passed
    assert "40 rows < gate.min_comparison_rows=41" in check(too_few, "non_inferiority:").detail
    without_rows = judge_candidate(policy(non_inferiority_margin=0.5, max_class_f1_drop=None, min_comparison_rows=20),
                                   {"frozen": slice_metrics(truth, candidate_predicted)},
                                   {"frozen": slice_metrics(truth, champion_predicted)})
    assert check(without_rows, "non_inferiority:").verdict == "passed"  # point-estimate fallback


@pytest.mark.parametrize(("class_c_accuracy", "verdict"), [(0.9, "passed"), (0.4, "failed")])
def test_max_class_f1_drop(class_c_accuracy, verdict):
    champion_predicted = noisy(TRUTH, 0.9, 5)
    candidate_predicted = noisy(TRUTH, 0.9, 5).copy()
    class_c = TRUTH == 2
    candidate_predicted[class_c] = noisy(TRUTH[class_c], class_c_accuracy, 6)
    result = judge_candidate(policy(max_class_f1_drop=0.1, non_inferiority_margin=1.0),
                             {"frozen": slice_metrics(TRUTH, candidate_predicted)},
                             {"frozen": slice_metrics(TRUTH, champion_predicted)})
    item = check(result, "max_class_f1_drop:frozen")
    assert item.verdict == verdict
    if verdict == "failed":
        assert "class c" in item.detail


def test_class_f1_drop_ignores_classes_below_min_support():
    truth = np.array([0] * 50 + [1] * 50 + [2] * 5)
    champion_predicted = truth.copy()
    candidate_predicted = truth.copy()
    candidate_predicted[-5:] = 0  # class c lost entirely, but only 5 rows
    result = judge_candidate(policy(max_class_f1_drop=0.1, non_inferiority_margin=1.0),
                             {"frozen": slice_metrics(truth, candidate_predicted)},
                             {"frozen": slice_metrics(truth, champion_predicted)})
    assert check(result, "max_class_f1_drop:frozen").verdict == "passed"


@pytest.mark.parametrize(("old_accuracy", "verdict"), [(0.88, "passed"), (0.6, "failed")])
def test_max_forgetting_on_old_slice(old_accuracy, verdict):
    champion = {"frozen": slice_metrics(TRUTH, TRUTH), "old": slice_metrics(TRUTH, noisy(TRUTH, 0.9, 7))}
    candidate = {"frozen": slice_metrics(TRUTH, TRUTH), "old": slice_metrics(TRUTH, noisy(TRUTH, old_accuracy, 8))}
    result = judge_candidate(policy(max_forgetting=0.05, non_inferiority_margin=1.0, max_class_f1_drop=None),
                             candidate, champion)
    item = check(result, "max_forgetting:old")
    assert item.value == pytest.approx(champion["old"]["macro_f1"] - candidate["old"]["macro_f1"])
    assert item.verdict == verdict


def test_no_forgetting_check_without_old_slice_or_champion():
    candidate = {"frozen": slice_metrics(TRUTH, TRUTH)}
    assert not [c for c in judge_candidate(policy(), candidate, candidate).checks if c.name.startswith("max_forgetting")]
    assert [c.name for c in judge_candidate(policy(), candidate, None).checks] == ["floor:frozen.macro_f1"]


@pytest.mark.parametrize(("best", "verdict"), [(0.80, "passed"), (0.95, "failed")])
def test_drop_below_the_best_champion_so_far(best, verdict):
    # The candidate is within max_forgetting of today's champion, but each such step could compound:
    # it is also held to the best score any champion reached on the frozen slice.
    candidate = {"frozen": slice_metrics(TRUTH, noisy(TRUTH, 0.85, 9))}
    result = judge_candidate(policy(max_drop_below_best=0.02, non_inferiority_margin=1.0, max_class_f1_drop=None),
                             candidate, candidate, best_frozen=BestScore(value=best, version="3"))
    item = check(result, "max_drop_below_best:frozen.macro_f1")
    assert item.value == pytest.approx(best - candidate["frozen"]["macro_f1"])
    assert item.verdict == verdict and result.passed is (verdict == "passed")
    assert "version 3" in item.detail
    unchecked = judge_candidate(policy(), candidate, candidate, best_frozen=BestScore(value=best, version="3"))
    assert not [c for c in unchecked.checks if c.name.startswith("max_drop_below_best")]  # policy default: off


@pytest.mark.parametrize(("p95", "verdict"), [(20.0, "passed"), (80.0, "failed")])
def test_latency_budget(p95, verdict):
    candidate = {"frozen": slice_metrics(TRUTH, TRUTH)}
    result = judge_candidate(policy(max_latency_ms_batch1_p95=50.0), candidate, None,
                             latency={"latency_ms_batch1_p95": p95})
    assert check(result, "latency:").verdict == verdict
    assert not [c for c in judge_candidate(policy(), candidate, None, latency={"latency_ms_batch1_p95": p95}).checks
                if c.name.startswith("latency")]  # no budget: not judged


@pytest.mark.parametrize(("ece", "verdict"), [(0.03, "passed"), (0.2, "failed")])
def test_calibration_bound(ece, verdict):
    candidate = {"frozen": slice_metrics(TRUTH, TRUTH, ece=ece)}
    assert check(judge_candidate(policy(max_ece=0.1), candidate, None), "calibration:frozen").verdict == verdict


def test_expected_calibration_error():
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    confident_and_right = np.eye(3)[truth]
    assert expected_calibration_error(truth, confident_and_right) == pytest.approx(0.0)
    # Always 0.9 confident in class 0, right 4 times out of 10: |0.4 - 0.9| = 0.5.
    overconfident = np.tile([0.9, 0.05, 0.05], (10, 1))
    assert expected_calibration_error(truth, overconfident) == pytest.approx(0.5)


def test_bootstrap_ci_contains_the_true_difference_and_is_seeded():
    candidate_predicted, champion_predicted = noisy(TRUTH, 0.9, 9), noisy(TRUTH, 0.8, 10)
    comparison = compare_paired(TRUTH, candidate_predicted, champion_predicted, 3, seed=3)
    true_difference = (classification_metrics(TRUTH, candidate_predicted, LABELS)["macro_f1"]
                       - classification_metrics(TRUTH, champion_predicted, LABELS)["macro_f1"])
    assert comparison.difference == pytest.approx(true_difference)
    assert comparison.ci_low < true_difference < comparison.ci_high
    assert 0 < comparison.ci_high - comparison.ci_low < 0.15
    again = compare_paired(TRUTH, candidate_predicted, champion_predicted, 3, seed=3)
    assert (again.ci_low, again.ci_high) == (comparison.ci_low, comparison.ci_high)
    other = compare_paired(TRUTH, candidate_predicted, champion_predicted, 3, seed=4)
    assert (other.ci_low, other.ci_high) != (comparison.ci_low, comparison.ci_high)


def test_bootstrap_accuracy_matches_the_plain_accuracy():
    candidate_predicted, champion_predicted = noisy(TRUTH, 0.9, 11), noisy(TRUTH, 0.8, 12)
    comparison = compare_paired(TRUTH, candidate_predicted, champion_predicted, 3, metric="accuracy")
    expected = np.mean(candidate_predicted == TRUTH) - np.mean(champion_predicted == TRUTH)
    assert comparison.difference == pytest.approx(expected)
    assert comparison.ci_low < expected < comparison.ci_high


def test_mcnemar_small_p_for_a_clearly_better_model_and_one_for_identical_predictions():
    better = compare_paired(TRUTH, noisy(TRUTH, 0.95, 13), noisy(TRUTH, 0.75, 14), 3)
    assert better.candidate_only_correct > better.champion_only_correct
    assert better.mcnemar_p_value < 1e-6
    same_predictions = noisy(TRUTH, 0.8, 15)
    identical = compare_paired(TRUTH, same_predictions, same_predictions, 3)
    assert identical.mcnemar_p_value == 1.0
    assert identical.ci_low == identical.ci_high == identical.difference == 0.0


def test_paired_comparison_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="equal"):
        compare_paired(TRUTH, TRUTH[:10], TRUTH, 3)
