"""bench/active_learning.py in its quick mode on a tiny model, run once per module: every strategy x seed x round
and every fine-tune (the last round's, and round 1's of the strategies other than random) lands in the results file, the freshet strategy's picks keep the label step's budget
and control share, a rerun measures nothing, and a cut-short curve is resumed from the ids it had labelled."""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import active_learning
from bench.label_efficiency import split_corpus
from tasks.demo.corpus import write_corpus
from tests.corpus_support import synthetic_corpus

LABELS = ["alpha", "beta", "gamma"]
STRATEGIES = ("random", "margin", "freshet")
SEEDS, ROUNDS, SEED_LABELS, BATCH = (0, 1), 3, 30, 20  # what --quick sets
FINETUNED = 1  # --finetune-rounds: fine-tuned too, besides the last round


def read(results: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in results.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The first run, a rerun, and a rerun after the last two rounds and the final point of one curve were lost."""
    root = tmp_path_factory.mktemp("active_learning")
    corpus, results = root / "corpus.jsonl", root / "results.jsonl"
    rows = synthetic_corpus(900, LABELS, seed=2)
    write_corpus(rows, corpus)
    argv = ["--quick", "--corpus", str(corpus), "--labels", ",".join(LABELS), "--model", "tiny", "--threads", "1",
            "--results", str(results), "--cache-dir", str(root / "cache"), "--efficiency-results", str(root / "none"),
            "--finetune-rounds", str(FINETUNED)]

    def run() -> str:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            assert active_learning.main(argv) == 0
        return printed.getvalue()

    first_output = run()
    first = read(results)
    rerun_output = run()
    after_rerun = read(results)
    lost = [record for record in first if record.get("strategy") == "freshet" and record["seed"] == 1
            and (record["round"] >= 2 or record["kind"] == "final")]
    results.write_text("".join(json.dumps(record) + "\n" for record in first if record not in lost))
    resume_output = run()
    return {"rows": rows, "root": root, "first": first, "first_output": first_output, "rerun_output": rerun_output,
            "after_rerun": after_rerun, "lost": lost, "resumed": read(results)[len(first) - len(lost):],
            "resume_output": resume_output}


def rounds_of(records: list[dict[str, Any]], strategy: str, seed: int) -> list[dict[str, Any]]:
    return sorted((record for record in records if record["kind"] == "round" and record["strategy"] == strategy
                   and record["seed"] == seed), key=lambda record: record["round"])


def test_every_strategy_seed_and_round_is_measured_on_one_test_set(runs):
    records = runs["first"]
    assert sorted((r["strategy"], r["seed"], r["round"], r["labels"]) for r in records if r["kind"] == "round") == \
        sorted((s, seed, n, SEED_LABELS + BATCH * n) for s in STRATEGIES for seed in SEEDS for n in range(ROUNDS + 1))
    finals = [record for record in records if record["kind"] == "final"]
    assert sorted((r["strategy"], r["seed"], r["round"]) for r in finals) == sorted(
        (s, seed, n) for s in STRATEGIES for seed in SEEDS for n in ((ROUNDS,) if s == "random" else (FINETUNED, ROUNDS)))
    assert all(r["labels"] == SEED_LABELS + BATCH * r["round"] and 0 <= r["blend_weight"] <= 1 for r in finals)
    assert all(0 <= r["macro_f1"] <= 1 and r["cpu_seconds"] >= 0 for r in records if r["kind"] != "embeddings")
    # One fixed test set: the stable-hash fifth of the corpus (capped at 300 in quick mode), embedded once.
    assert len({record["test_rows"] for record in records}) == 1 and 100 < records[0]["test_rows"] <= 300
    assert [record["kind"] for record in records].count("embeddings") == 1
    assert len(list((runs["root"] / "cache").glob(f"embeddings-{records[0]['corpus']}.npy"))) == 1


def test_labels_are_pool_rows_each_labelled_once_from_one_stratified_seed(runs):
    records = runs["first"]
    pool, test = split_corpus(runs["rows"], 0.2)
    label_of = {row["id"]: row["label"] for row in pool}
    test_ids = {row["id"] for row in test}
    for strategy in STRATEGIES:
        for seed in SEEDS:
            labelled = [identifier for record in rounds_of(records, strategy, seed) for identifier in record["new_ids"]]
            assert len(labelled) == len(set(labelled)) == SEED_LABELS + BATCH * ROUNDS
            assert not set(labelled) & test_ids and set(labelled) <= set(label_of)
    for seed in SEEDS:
        seeds = {tuple(rounds_of(records, strategy, seed)[0]["new_ids"]) for strategy in STRATEGIES}
        assert len(seeds) == 1  # every strategy starts from the same labels
        counts = Counter(label_of[identifier] for identifier in seeds.pop())
        pool_counts = Counter(row["label"] for row in pool)
        assert all(abs(counts[label] - SEED_LABELS * pool_counts[label] / len(pool)) < 1 for label in LABELS)
    assert rounds_of(records, "random", 0)[0]["new_ids"] != rounds_of(records, "random", 1)[0]["new_ids"]


def test_freshet_picks_keep_the_budget_and_the_control_share(runs):
    for strategy in STRATEGIES:
        for seed in SEEDS:
            for record in rounds_of(runs["first"], strategy, seed)[1:]:
                assert record["picked"] == BATCH and sum(record["picked_by_label"].values()) == BATCH
                if strategy == "freshet":  # the demo config's label.control_fraction: 0.1
                    assert (record["by_control"], record["by_uncertainty"]) == (2, BATCH - 2)
                    assert record["eligible"] >= BATCH and record["near_duplicates"] >= 0


def test_a_rerun_measures_nothing(runs):
    assert runs["after_rerun"] == runs["first"]
    assert " seed 0 round " not in runs["rerun_output"] and "fine-tuned on" not in runs["rerun_output"]


def test_a_cut_short_curve_is_replayed_from_its_ids_and_goes_on(runs):
    lost, resumed = runs["lost"], runs["resumed"]
    assert [(r["kind"], r["round"]) for r in resumed] == [(r["kind"], r["round"]) for r in lost]
    for before, after in zip(lost, resumed):
        if before["kind"] == "round":  # the selection and the per-round model are deterministic given the seed
            assert after["new_ids"] == before["new_ids"] and after["macro_f1"] == pytest.approx(before["macro_f1"])
    assert "freshet seed 1 round  2" in runs["resume_output"] and "random seed 0 round" not in runs["resume_output"]


def test_the_summary_compares_every_strategy_with_random(runs):
    output = runs["first_output"]
    assert "macro-F1 of logistic regression on the frozen embeddings and the TF-IDF SVD after each round" in output
    assert {record.get("scorer") for record in runs["first"]} == {"blend"}
    assert "| round | labels | random | margin | freshet |" in output
    assert f"| {ROUNDS} | {SEED_LABELS + BATCH * ROUNDS} | " in output
    assert f"| random | {SEED_LABELS + BATCH * ROUNDS} | 100% | 100%, 100% |" in output
    assert "| margin | " in output and "| freshet | 0, 1 | " in output
    assert "final points: freshet's fine-tune" in output
    assert "labels each strategy's fine-tune needs to reach random's fine-tuned final F1" in output
    fine_tuned = f"{SEED_LABELS + BATCH * FINETUNED}: "
    assert all(any(line.startswith(f"| {s} | 0, 1 | ") and fine_tuned in line for line in output.splitlines())
               for s in ("margin", "freshet"))


def test_the_blend_stand_in_s_lexical_half_is_unit_rows_fitted_on_the_pool():
    pool = ["python module for parsing yaml", "perl module for parsing xml", "haskell library for parsing json",
            "rust crate for yaml files", "documentation of the python module"]
    fitted, unseen = active_learning.lexical_features(pool, pool, ["yaml parsing in python", "zzz"], dimensions=3)
    assert fitted.shape == (5, 3) and unseen.shape == (2, 3)
    assert np.allclose(np.linalg.norm(fitted, axis=1), 1.0, atol=1e-5)
    assert not unseen[1].any()  # no word the pool knows: a zero row, not a division by zero
    nearest = int(np.argmax(fitted @ unseen[0]))
    assert "yaml" in pool[nearest]


def test_labels_to_reach_interpolates_between_rounds():
    curve = [(100.0, 0.50), (200.0, 0.60), (300.0, 0.70)]
    assert active_learning.labels_to_reach(curve, 0.65) == pytest.approx(250.0)
    assert active_learning.labels_to_reach(curve, 0.45) == 100.0  # reached before the first round's measurement
    assert active_learning.labels_to_reach(curve, 0.71) is None
    assert active_learning.share(None, 300) == "not reached" and active_learning.share(150.0, 300) == "50%"
