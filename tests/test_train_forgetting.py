"""Forgetting: a warm-started round on a new day's data, with replay of the earlier snapshot, keeps
the champion's accuracy on the old day's test split within the gate's `max_forgetting` bound.

Real training of a tiny BERT on separable synthetic data with two "days": day 1 has all three classes
with their own cue words; day 2 is class-incremental drift (only two classes, new cue words), the
setting in which a model trained on the new day alone drifts away from the missing class.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from tasks.contract import read_manifest
from tasks.models.inference import predict
from tasks.records import CleanFacts, read_rows
from tasks.store import ArtifactStore
from tasks.train import fit, gather_training_data
from tests.corpus_support import synthetic_corpus
from tests.pipeline_support import CPU, LABELS, fake_upstream, tiny_config

NEW_CUES = {"alpha": "river", "beta": "stone", "gamma": "cloud"}
MODEL = {"dropout": 0.0, "learning_rate": 1e-3, "warm_start_learning_rate": 5e-4, "epochs": 5,
         "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}}


def day_two(count: int) -> list[dict]:
    rows = synthetic_corpus(count, ["beta", "gamma"], seed=2)
    return [{"id": f"day2-{row['id']}", "label": row["label"],
             "text": re.sub(r"\b(alpha|beta|gamma)(\d)", lambda m: NEW_CUES[m.group(1)] + m.group(2), row["text"])}
            for row in rows]


def training_data(config, store, run_id):
    clean, augment = read_manifest(store, run_id, "clean"), read_manifest(store, run_id, "augment")
    return gather_training_data(config, read_rows(store.local_path(augment.output("train").uri)),
                                read_rows(store.local_path(clean.output("dataset").uri)),
                                [entry.model_dump() for entry in CleanFacts.of(clean).prior_snapshots], store)


def accuracy(result, rows) -> float:
    predictions = predict(result.model, result.tokenizer, [row["text"] for row in rows], max_length=16)
    return float(np.mean(predictions.label_ids == np.array([LABELS.index(row["label"]) for row in rows])))


@pytest.fixture(scope="module")
def two_days(tmp_path_factory):
    root = tmp_path_factory.mktemp("forgetting")
    config = tiny_config(root, warm_start=False, replay_fraction=1.0, **MODEL)
    store = ArtifactStore(config.artifact_root)
    day1 = [dict(row, id=f"day1-{row['id']}") for row in synthetic_corpus(300, LABELS, seed=1)]
    day2 = day_two(300)
    fake_upstream(config, store, "day1", "2026-11-01", day1)
    fake_upstream(config, store, "day2", "2026-11-02", day2)

    champion = fit(config, training_data(config, store, "day1"), CPU, root / "checkpoints-1", None)
    champion.model.save_pretrained(root / "champion")
    champion.tokenizer.save_pretrained(root / "champion")
    replay_data = training_data(config, store, "day2")
    candidate = fit(config, replay_data, CPU, root / "checkpoints-2", root / "champion")
    old_test = [row for row in day1 if row["split"] == "test"]
    new_test = [row for row in day2 if row["split"] == "test"]
    return config, champion, candidate, replay_data, old_test, new_test


def test_replay_sample_comes_from_the_earlier_day(two_days):
    _, _, _, data, _, _ = two_days
    replayed = [row for row in data.train if row["id"].startswith("day1-")]
    assert data.counts["rows_replay"] == len(replayed) > 0
    assert all(row["split"] == "train" for row in replayed)  # never the old test split
    assert {row["label"] for row in replayed} == set(LABELS)


def test_only_the_warm_started_round_takes_the_warm_start_learning_rate(two_days):
    _, champion, candidate, _, _, _ = two_days
    assert champion.metrics["peak_learning_rate"] == 1e-3  # the first model: no champion to refine
    assert candidate.metrics["peak_learning_rate"] == 5e-4


def test_warm_started_round_learns_the_new_day(two_days):
    _, champion, candidate, _, _, new_test = two_days
    assert accuracy(candidate, new_test) >= max(0.9, accuracy(champion, new_test))


def test_old_day_accuracy_stays_within_the_forgetting_bound(two_days):
    config, champion, candidate, _, old_test, _ = two_days
    bound = config.evaluate.gate.max_forgetting
    old_champion, old_candidate = accuracy(champion, old_test), accuracy(candidate, old_test)
    print(f"old-day accuracy: champion {old_champion:.3f}, candidate {old_candidate:.3f}, bound {bound}")
    assert old_champion >= 0.9, "the champion never learned day 1: the test would prove nothing"
    assert old_champion - old_candidate <= bound
