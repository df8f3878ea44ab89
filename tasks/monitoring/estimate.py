"""A label-free performance estimate from calibrated confidence: NannyML's CBPE (confidence-based
performance estimation), in two forms.

CBPE's premise: once a model's probabilities are calibrated, the expected confusion matrix of unlabelled
data follows from them alone, and with it the expected macro-F1. It holds under covariate shift (the inputs
move, P(label | score) does not); it cannot see concept drift (the same input now means another class).

With every class's probability (batch scoring keeps them), as NannyML does it (`estimate_from_probabilities`):
each class's probability is calibrated one-vs-rest on the reference (isotonic regression of "true label is
c" on the probability of c), then E[TP_c] = sum of P(c) over rows predicted c, E[FP_c] = sum of 1 - P(c)
over them, E[FN_c] = sum of P(c) over rows predicted otherwise.

With the top-1 confidence only (what the prediction log keeps of a served answer, `estimate`):
1. isotonic regression of correctness (predicted == true) on top-1 confidence over the reference: q = g(p);
2. per class c: E[TP_c] = sum of q over rows predicted c, E[FP_c] = sum of (1 - q) over them, and
   E[FN_c] = sum over rows predicted k != c of (1 - q) * P(true = c | predicted k, wrong), the share taken
   from the reference's errors (smoothed toward uniform, so an error the reference never made keeps a
   little weight).

Either way F1_c = 2 E[TP_c] / (2 E[TP_c] + E[FP_c] + E[FN_c]); the macro average is over the classes whose
expected support E[TP_c + FN_c] is at least `min_support` (as the real macro-F1 counts only classes present
in a slice), and the expected accuracy is the expected share of right predictions. The top-1 form cannot
tell classes apart at equal confidence, so with many classes and a small reference it is a few points
less accurate on macro-F1 (docs/monitoring.md has the figures); see there too for why this is not the
`nannyml` package.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# Pseudo-count of the error pattern's smoothing: spread uniformly over the other classes of each row.
ERROR_SMOOTHING = 0.5
# Expected support a class needs to count in the macro average.
MIN_SUPPORT = 1.0


@dataclass(frozen=True)
class Calibration:
    """Calibrated confidence and the reference's error pattern for one model version."""

    thresholds: np.ndarray  # isotonic fit: x knots
    values: np.ndarray  # y at the knots
    error_pattern: np.ndarray  # [predicted k, true c] = P(true c | predicted k, wrong); rows sum to 1
    labels: list[str]

    def calibrate(self, confidence: np.ndarray) -> np.ndarray:
        return np.clip(np.interp(np.asarray(confidence, dtype=float), self.thresholds, self.values), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds.tolist(), "values": self.values.tolist(),
                "error_pattern": self.error_pattern.tolist(), "labels": self.labels}


def fit_calibration(truth: npt.ArrayLike, predicted: npt.ArrayLike, confidence: npt.ArrayLike,
                    labels: Sequence[str]) -> Calibration:
    """Isotonic regression of correctness on confidence, and P(true | predicted, wrong), on labelled rows."""
    from sklearn.isotonic import IsotonicRegression

    truth_array, predicted_array = np.asarray(truth, dtype=int), np.asarray(predicted, dtype=int)
    confidence_array = np.asarray(confidence, dtype=float)
    correct = (truth_array == predicted_array).astype(float)
    if truth_array.size == 0:
        raise ValueError("calibration needs labelled reference rows")
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
    isotonic.fit(confidence_array, correct)
    thresholds, values = np.asarray(isotonic.X_thresholds_, dtype=float), np.asarray(isotonic.y_thresholds_, dtype=float)
    if thresholds.size == 1:  # one distinct confidence: a constant
        thresholds, values = np.array([0.0, 1.0]), np.repeat(values, 2)
    classes = len(labels)
    pattern = np.full((classes, classes), 0.0)
    wrong = truth_array != predicted_array
    valid = wrong & (truth_array >= 0) & (predicted_array >= 0)
    np.add.at(pattern, (predicted_array[valid], truth_array[valid]), 1.0)
    if classes > 1:
        smoothing = np.full((classes, classes), ERROR_SMOOTHING / (classes - 1))
        np.fill_diagonal(smoothing, 0.0)
        pattern += smoothing
    np.fill_diagonal(pattern, 0.0)
    sums = pattern.sum(axis=1, keepdims=True)
    pattern = np.divide(pattern, sums, out=np.zeros_like(pattern), where=sums > 0)
    return Calibration(thresholds, values, pattern, list(labels))


@dataclass(frozen=True)
class ClassCalibration:
    """One isotonic map per class: its probability -> P(true label is that class), fit on the reference."""

    thresholds: list[np.ndarray]
    values: list[np.ndarray]
    labels: list[str]

    def calibrate(self, probabilities: np.ndarray) -> np.ndarray:
        probabilities = np.asarray(probabilities, dtype=float)
        return np.column_stack([np.clip(np.interp(probabilities[:, c], self.thresholds[c], self.values[c]), 0.0, 1.0)
                                for c in range(len(self.labels))]) if len(probabilities) else probabilities


def fit_class_calibration(truth: npt.ArrayLike, probabilities: npt.ArrayLike, labels: Sequence[str]) -> ClassCalibration:
    """Per class, isotonic regression of (truth == c) on the probability of c, over labelled rows."""
    from sklearn.isotonic import IsotonicRegression

    truth_array, matrix = np.asarray(truth, dtype=int), np.asarray(probabilities, dtype=float)
    thresholds, values = [], []
    for c in range(len(labels)):
        isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
        isotonic.fit(matrix[:, c], (truth_array == c).astype(float))
        knots, fitted = np.asarray(isotonic.X_thresholds_, dtype=float), np.asarray(isotonic.y_thresholds_, dtype=float)
        if knots.size == 1:
            knots, fitted = np.array([0.0, 1.0]), np.repeat(fitted, 2)
        thresholds.append(knots)
        values.append(fitted)
    return ClassCalibration(thresholds, values, list(labels))


def estimate_from_probabilities(calibration: ClassCalibration, probabilities: npt.ArrayLike,
                                min_support: float = MIN_SUPPORT) -> dict[str, Any]:
    """CBPE from every class's probability: the expected confusion counts of each class, one-vs-rest."""
    matrix = np.asarray(probabilities, dtype=float)
    if matrix.size == 0:
        return {"macro_f1": float("nan"), "accuracy": float("nan"), "rows": 0, "per_class_f1": [], "support": []}
    calibrated = calibration.calibrate(matrix)
    predicted = matrix.argmax(axis=1)
    classes = len(calibration.labels)
    chosen = np.zeros_like(calibrated, dtype=bool)
    chosen[np.arange(len(predicted)), predicted] = True
    tp = np.where(chosen, calibrated, 0.0).sum(axis=0)
    fp = np.where(chosen, 1.0 - calibrated, 0.0).sum(axis=0)
    fn = np.where(chosen, 0.0, calibrated).sum(axis=0)
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros(classes), where=denominator > 0)
    support = tp + fn
    present = support >= min_support
    return {"macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
            "accuracy": float(tp.sum() / len(predicted)), "rows": len(predicted), "per_class_f1": f1.tolist(),
            "support": support.tolist()}


def expected_confusion(calibration: Calibration, predicted: npt.ArrayLike, confidence: npt.ArrayLike) -> np.ndarray:
    """The expected confusion matrix [true, predicted] of unlabelled rows."""
    predicted_array = np.asarray(predicted, dtype=int)
    q = calibration.calibrate(np.asarray(confidence, dtype=float))
    classes = len(calibration.labels)
    matrix = np.zeros((classes, classes))
    for k in range(classes):
        rows = predicted_array == k
        if not rows.any():
            continue
        matrix[k, k] += q[rows].sum()
        matrix[:, k] += (1.0 - q[rows]).sum() * calibration.error_pattern[k]
    return matrix


def f1_from_confusion(matrix: np.ndarray, min_support: float = MIN_SUPPORT) -> dict[str, Any]:
    """Per-class and macro F1 of a (possibly fractional) confusion matrix [true, predicted]."""
    tp = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    denominator = support + predicted  # 2TP + FP + FN
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    present = support >= min_support
    total = matrix.sum()
    return {"macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
            "accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
            "per_class_f1": f1.tolist(), "support": support.tolist()}


def estimate(calibration: Calibration, predicted: npt.ArrayLike, confidence: npt.ArrayLike,
             min_support: float = MIN_SUPPORT) -> dict[str, Any]:
    """The label-free estimate for rows with these predictions: expected macro-F1, accuracy, per class."""
    predicted_array = np.asarray(predicted, dtype=int)
    if predicted_array.size == 0:
        return {"macro_f1": float("nan"), "accuracy": float("nan"), "rows": 0, "per_class_f1": [], "support": []}
    result = f1_from_confusion(expected_confusion(calibration, predicted_array, confidence), min_support)
    result["rows"] = int(predicted_array.size)
    result["mean_calibrated_confidence"] = float(calibration.calibrate(np.asarray(confidence, dtype=float)).mean())
    return result
