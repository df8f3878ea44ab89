"""The label-free estimate (CBPE-style) and the drift measures of tasks/monitoring, on simulated predictions
whose truth is known: a model whose confidence is miscalibrated in a known way."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.models.metrics import classification_metrics
from tasks.monitoring import drift
from tasks.monitoring.estimate import estimate, fit_calibration

LABELS = ["a", "b", "c", "d"]


def simulated(rows: int, seed: int, prior=(0.4, 0.3, 0.2, 0.1)):
    """Predictions of an overconfident model: right with probability p**2 where it says p; its errors land
    on the next class more often than on the others (a confusion pattern the estimate must learn)."""
    generator = np.random.default_rng(seed)
    predicted = generator.choice(len(LABELS), size=rows, p=prior)
    confidence = generator.uniform(0.3, 1.0, size=rows)
    right = generator.random(rows) < confidence ** 2
    truth = predicted.copy()
    for row in np.flatnonzero(~right):
        others = [label for label in range(len(LABELS)) if label != predicted[row]]
        weights = np.array([3.0 if label == (predicted[row] + 1) % len(LABELS) else 1.0 for label in others])
        truth[row] = generator.choice(others, p=weights / weights.sum())
    return truth, predicted, confidence


def test_the_estimate_matches_the_real_macro_f1_of_unlabelled_rows_from_the_same_model():
    truth, predicted, confidence = simulated(4000, seed=1)
    calibration = fit_calibration(truth, predicted, confidence, LABELS)
    for seed in (2, 3, 4):
        production_truth, production_predicted, production_confidence = simulated(4000, seed=seed)
        estimated = estimate(calibration, production_predicted, production_confidence)
        real = classification_metrics(production_truth.tolist(), production_predicted, LABELS)
        assert estimated["macro_f1"] == pytest.approx(real["macro_f1"], abs=0.015)
        assert estimated["accuracy"] == pytest.approx(real["accuracy"], abs=0.015)
        # The raw confidence would be far off: the calibration is what makes the estimate.
        assert float(production_confidence.mean()) - real["accuracy"] > 0.1


def test_the_estimate_follows_a_covariate_shift_toward_unsure_rows():
    truth, predicted, confidence = simulated(4000, seed=1)
    calibration = fit_calibration(truth, predicted, confidence, LABELS)
    shifted_truth, shifted_predicted, shifted_confidence = simulated(6000, seed=5)
    unsure = shifted_confidence < 0.6  # production now brings mostly hard texts
    keep = unsure | (np.random.default_rng(6).random(len(unsure)) < 0.2)
    estimated = estimate(calibration, shifted_predicted[keep], shifted_confidence[keep])
    real = classification_metrics(shifted_truth[keep].tolist(), shifted_predicted[keep], LABELS)
    whole = estimate(calibration, predicted, confidence)
    assert whole["macro_f1"] - estimated["macro_f1"] > 0.1, "the estimate must see the drop"
    assert estimated["macro_f1"] == pytest.approx(real["macro_f1"], abs=0.03)


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shifted_one():
    generator = np.random.default_rng(0)
    reference = generator.normal(50, 10, 5000)
    assert drift.binned_psi(reference, reference, 10) == pytest.approx(0)
    assert drift.binned_psi(reference, generator.normal(50, 10, 5000), 10) < 0.02
    assert drift.binned_psi(reference, generator.normal(65, 10, 5000), 10) > 0.5
    assert drift.length_psi(reference, reference, 10) == pytest.approx(0)
    assert drift.label_psi(["a", "b"] * 50, ["a"] * 100) > 1


def test_oov_counts_words_the_training_texts_never_had():
    known = drift.vocabulary(["A small library for parsing", "the parser of files"])
    assert drift.oov_rate(["small files", "parsing"], known) == 0
    assert drift.oov_rate(["Small zebra files", "quantum"], known) == pytest.approx(2 / 4)
    assert drift.oov_rate([""], known) is None
