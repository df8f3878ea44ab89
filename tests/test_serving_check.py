"""The register step's serving check: comparison rules, and a real fresh-process load that fails loudly."""

from __future__ import annotations

from tasks.models.serving_check import compare_serving
from tasks.register import check_serving
from tests.pipeline_support import tiny_config


def sample(labels, probabilities, tolerance=1e-3):
    return {"variant": "fp32", "tolerance": tolerance, "ids": [f"row-{i}" for i in range(len(labels))],
            "texts": [f"text {i}" for i in range(len(labels))], "labels": labels, "probabilities": probabilities}


EXPECTED = sample(["alpha", "beta"], [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])


def test_identical_predictions_pass():
    result = compare_serving(EXPECTED, {"labels": ["alpha", "beta"], "probabilities": [0.7, 0.6000004]})
    assert result["passed"] and result["message"] == "reproduced" and result["max_abs_diff"] < 1e-6


def test_a_different_label_or_probability_fails_and_names_the_row():
    wrong_label = compare_serving(EXPECTED, {"labels": ["alpha", "gamma"], "probabilities": [0.7, 0.6]})
    assert not wrong_label["passed"] and "row id 'row-1' expected beta" in wrong_label["message"]
    drifted = compare_serving(EXPECTED, {"labels": ["alpha", "beta"], "probabilities": [0.69, 0.6]})
    assert not drifted["passed"] and drifted["mismatches"][0]["id"] == "row-0"
    short = compare_serving(EXPECTED, {"labels": ["alpha"], "probabilities": [0.7]})
    assert not short["passed"] and "1 predictions for 2" in short["message"]


def test_a_near_tie_may_flip_its_label():
    tie = sample(["alpha"], [[0.4502, 0.4498, 0.1]])
    assert compare_serving(tie, {"labels": ["beta"], "probabilities": [0.4502]})["passed"]


def test_an_unloadable_model_fails_with_the_fresh_process_error(tmp_path):
    config = tiny_config(tmp_path)
    result = check_serving(config, "models:/no-such-model/1", EXPECTED, timeout_s=300)
    assert not result["passed"]
    assert "fresh process failed" in result["message"] and "no-such-model" in result["message"]
