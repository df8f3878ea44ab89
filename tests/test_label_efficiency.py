"""bench/label_efficiency.py in its quick mode on a tiny model: every method runs, points are appended to the
results file, a rerun skips them, and the table compares with both anchors. Plus self-training's selection."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.config import PseudoLabelConfig
from tasks.demo.corpus import write_corpus
from tasks.training.pseudo_labels import select_pseudo_labels
from tests.corpus_support import synthetic_corpus

REPO = Path(__file__).resolve().parents[1]
LABELS = ["alpha", "beta", "gamma"]


def run_bench(corpus: Path, results: Path) -> str:
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "label_efficiency.py"), "--quick", "--corpus", str(corpus),
         "--labels", ",".join(LABELS), "--model", "tiny", "--results", str(results)],
        check=False, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_quick_mode_measures_every_method_and_resumes(tmp_path):
    corpus, results = tmp_path / "corpus.jsonl", tmp_path / "results.jsonl"
    write_corpus(synthetic_corpus(900, LABELS, seed=2), corpus)
    first = run_bench(corpus, results)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert {(record["method"], record["rows"]) for record in records} == {
        (method, rows) for method in ("tfidf", "trainer", "freshet", "freshet-self") for rows in (60, 120)}
    # One fixed test set for every point: a fifth of the corpus by a stable hash (capped at 300 in quick mode).
    assert len({record["test_rows"] for record in records}) == 1 and 100 < records[0]["test_rows"] <= 300
    assert all(record["cpu_seconds"] >= 0 for record in records)
    freshet = [record for record in records if record["method"] == "freshet"]
    assert all(0 <= record["blend_weight"] <= 1 and "transformer_macro_f1" in record for record in freshet)
    assert "- TF-IDF (points)" in first and "| 120 | freshet | 1 |" in first
    again = run_bench(corpus, results)
    assert results.read_text().count("\n") == len(records)  # nothing measured twice
    assert "rows     60 seed 0" not in again


def test_pseudo_labels_are_confident_balanced_capped_and_tagged():
    rows = [{"id": f"u{index}", "text": f"text {index}"} for index in range(12)]
    probabilities = np.array([[0.99, 0.005, 0.005]] * 6 + [[0.02, 0.97, 0.01]] * 3 + [[0.4, 0.3, 0.3]] * 3)
    chosen = select_pseudo_labels(rows, probabilities, LABELS, real_train_rows=8,
                                  settings=PseudoLabelConfig(min_confidence=0.9, max_share=0.75))
    # budget 6 = 0.75 x 8, 2 per class: two alphas, two betas, no gamma (none confident), no 0.4 row.
    assert [row["label"] for row in chosen] == ["alpha", "alpha", "beta", "beta"]
    assert all(row["pseudo_label"] and row["augmented_from"] == row["id"].removeprefix("pseudo:") for row in chosen)
    assert select_pseudo_labels(rows, probabilities, LABELS, 8, PseudoLabelConfig(max_share=0.0)) == []


@pytest.mark.parametrize(("field", "value"), [("min_confidence", 1.5), ("max_share", 2.0), ("min_confidence", -0.1)])
def test_pseudo_label_settings_out_of_range_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        PseudoLabelConfig(**{field: value})
