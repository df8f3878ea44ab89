"""The lexical baseline (TF-IDF + LR) and the served blend: fitting, safe save/load, the weight choice, the
gate's baseline check, and what evaluate, compress and register make of them on the model steps' rounds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from tasks import model_registry
from tasks.config import BaselineConfig, GatePolicy
from tasks.evaluate import EvaluateFacts
from tasks.gate_policy import compare_paired, judge_candidate
from tasks.models.blend import Blend, choose_weight, load_blend
from tasks.models.lexical import BaselineSkipped, LexicalModel
from tasks.models.metrics import classification_metrics
from tasks.register import RegisterFacts
from tests.corpus_support import synthetic_corpus

LABELS = ["alpha", "beta", "gamma", "delta"]
ROWS = synthetic_corpus(240, LABELS[:3], seed=3)
TEXTS, TARGETS = [row["text"] for row in ROWS], [row["label"] for row in ROWS]


def test_features_and_probabilities_are_scikit_learns_own():
    model = LexicalModel.fit(TEXTS[:200], TARGETS[:200], LABELS, BaselineConfig())
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    classifier = LogisticRegression(C=10.0, max_iter=1000).fit(vectorizer.fit_transform(TEXTS[:200]), TARGETS[:200])
    expected = classifier.predict_proba(vectorizer.transform(TEXTS[200:]))  # columns: alpha, beta, gamma
    probabilities = model.predict_proba(TEXTS[200:])
    assert probabilities.shape == (40, 4)
    np.testing.assert_allclose(probabilities[:, :3], expected, atol=1e-9)
    assert not probabilities[:, 3].any()  # delta: never in the train rows


def test_saved_model_reloads_without_pickle_and_predicts_the_same(tmp_path):
    model = LexicalModel.fit(TEXTS, TARGETS, LABELS, BaselineConfig(ngram_max=1, c=1.0))
    model.save(tmp_path / "lexical")
    assert sorted(path.name for path in (tmp_path / "lexical").iterdir()) == [
        "coef.npy", "idf.npy", "intercept.npy", "lexical.json"]
    again = LexicalModel.load(tmp_path / "lexical")
    np.testing.assert_array_equal(again.predict_proba(TEXTS[:30]), model.predict_proba(TEXTS[:30]))


def test_two_classes_use_the_binary_model():
    pairs = [(text, label) for text, label in zip(TEXTS, TARGETS) if label in ("alpha", "gamma")]
    texts, targets = [text for text, _ in pairs], [label for _, label in pairs]
    model = LexicalModel.fit(texts, targets, LABELS, BaselineConfig())
    probabilities = model.predict_proba(texts)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    predicted = [LABELS[index] for index in probabilities.argmax(axis=1)]
    assert np.mean([p == t for p, t in zip(predicted, targets)]) > 0.95


@pytest.mark.parametrize(("texts", "targets", "reason"), [
    ([], [], "no train rows"),
    (TEXTS[:5], ["alpha"] * 5, "one class only"),
    (TEXTS[:4], ["alpha", "beta", "omega", "beta"], "outside the label set"),
])
def test_a_baseline_that_cannot_fit_says_why(texts, targets, reason):
    with pytest.raises(BaselineSkipped, match=reason):
        LexicalModel.fit(texts, targets, LABELS, BaselineConfig())


def sharp_and_flat(rows):
    truth = np.arange(rows) % 3
    sharp = np.full((rows, 3), 0.05)
    sharp[np.arange(rows), truth] = 0.9
    return truth, sharp, np.full((rows, 3), 1 / 3)


def test_the_weight_follows_the_model_that_predicts_validation_better():
    truth, sharp, flat = sharp_and_flat(300)
    towards_transformer, towards_baseline = choose_weight(truth, sharp, flat), choose_weight(truth, flat, sharp)
    assert towards_transformer.unshrunk_weight == 1.0 and towards_baseline.unshrunk_weight == 0.0
    # 300 validation rows against the prior's 100 towards an even blend: (300 x 1 + 100 x 0.5) / 400 = 0.875.
    assert towards_transformer.weight == pytest.approx(0.875, abs=0.03)  # on the grid of 0.05 steps
    assert towards_baseline.weight == pytest.approx(0.125, abs=0.03)
    many = sharp_and_flat(3000)
    assert choose_weight(*many).weight == 1.0  # enough rows decide alone
    # Each right on a different half: a mix beats both.
    left, right = flat.copy(), flat.copy()
    left[:150], right[150:] = sharp[:150], sharp[150:]
    assert 0.0 < choose_weight(truth, left, right).unshrunk_weight < 1.0


def test_calibration_lets_an_underconfident_but_right_model_win():
    truth = np.arange(400) % 4
    shy = np.full((400, 4), 0.2)
    shy[np.arange(400), truth] = 0.4  # always right, never sure
    generator = np.random.default_rng(0)
    guessed = np.where(generator.random(400) < 0.7, truth, (truth + 1) % 4)
    bold = np.full((400, 4), 0.02)
    bold[np.arange(400), guessed] = 0.94  # 70% right, always sure
    raw, calibrated = choose_weight(truth, shy, bold, calibrate=False), choose_weight(truth, shy, bold)
    assert calibrated.transformer_temperature < 1.0 < calibrated.lexical_temperature
    assert calibrated.unshrunk_weight == 1.0 and calibrated.unshrunk_weight > raw.unshrunk_weight


def test_blend_saves_and_mixes(tmp_path):
    lexical = LexicalModel.fit(TEXTS, TARGETS, LABELS, BaselineConfig())
    blend = Blend(0.25, lexical)
    blend.save(tmp_path / "blend")
    loaded = load_blend(tmp_path / "blend")
    assert loaded is not None and loaded.weight == 0.25
    transformer = np.full((10, 4), 0.25)
    np.testing.assert_allclose(loaded.mix(TEXTS[:10], transformer),
                               0.25 * transformer + 0.75 * lexical.predict_proba(TEXTS[:10]))
    assert load_blend(tmp_path / "nothing-here") is None


def _slice(truth, predicted):
    return classification_metrics(truth, predicted, ["a", "b", "c"])


@pytest.mark.parametrize(("accuracy", "rows", "verdict"), [(0.95, 600, "passed"), (0.6, 600, "failed"), (0.6, 60, "skipped")])
def test_gate_refuses_a_candidate_the_baseline_beats(accuracy, rows, verdict):
    generator = np.random.default_rng(0)
    truth = np.arange(rows) % 3
    baseline = np.where(generator.random(rows) < 0.9, truth, (truth + 1) % 3)
    candidate = np.where(generator.random(rows) < accuracy, truth, (truth + 2) % 3)
    comparison = compare_paired(truth, candidate, baseline, 3)
    policy = GatePolicy(floors={}, min_comparison_rows=100)
    result = judge_candidate(policy, {"fresh": _slice(truth, candidate)}, None, baseline={"fresh": comparison})
    [check] = [item for item in result.checks if item.name.startswith("over_baseline:fresh")]
    assert check.verdict == verdict
    assert result.passed is (verdict != "failed")
    if verdict == "skipped":
        assert "too few to compare with the lexical baseline" in check.detail


def test_gate_reports_a_baseline_that_could_not_be_fitted():
    result = judge_candidate(GatePolicy(floors={}), {"fresh": _slice([0, 1, 2], [0, 1, 2])}, None,
                             baseline=None, baseline_skipped="the train rows hold one class only ('a')")
    [check] = result.checks
    assert check.verdict == "skipped" and "one class only" in check.detail and result.passed


def test_every_round_reports_the_baseline_and_serves_the_chosen_blend(two_rounds):
    config, store, first, second = two_rounds
    for round_ in (first, second):
        evaluation = json.loads(store.local_path(round_["evaluate"].output("evaluation").uri).read_text())
        assert set(evaluation["baseline"]) == set(evaluation["candidate"]) >= {"frozen", "fresh"}
        metrics = round_["evaluate"].metrics
        for name in ("frozen", "fresh"):
            assert metrics[f"baseline.{name}.macro_f1"] == evaluation["baseline"][name]["macro_f1"]
        facts = EvaluateFacts.of(round_["evaluate"])
        weight = facts.blend_weight
        assert weight == evaluation["blend"]["weight"] and 0.0 <= weight <= 1.0
        assert ("blend" in round_["evaluate"].outputs) is (weight < 1.0)
        # The baseline is judged on every slice large enough, and the candidate is never worse than the lower
        # bound allows: the blend can always fall back to the baseline itself.
        checks = [check for check in facts.gate.checks if check.name.startswith("over_")]
        assert checks and all(check.verdict != "failed" for check in checks)
        report = store.local_path(round_["evaluate"].output("report").uri).read_text()
        assert "TF-IDF baseline" in report and "Served candidate:" in report
        # Register serves what evaluate measured: the version carries the blend when there is one, and the
        # fresh-process serving check (compress's sample, blended) passed.
        registered = RegisterFacts.of(round_["register"])
        version = registered.version
        blend_dir = model_registry.blend_dir(config, version)
        assert (blend_dir is not None) is (weight < 1.0)
        if blend_dir is not None:
            assert load_blend(blend_dir).weight == weight
        assert registered.serving_check["passed"] is True
