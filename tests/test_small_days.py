"""Small days are safe: the trainer takes a last batch smaller than `train.batch_size` (split across DDP ranks),
resumes exactly through it, and `decide` never starts a round without a train-split row per training process."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from tasks import decide
from tasks.config import ScheduleConfig
from tasks.decide import DecideFacts
from tasks.models.build import build_model
from tasks.records import read_rows, split_of
from tasks.store import ArtifactStore
from tasks.train import fit
from tasks.training.data import TrainingData, bucketed_batches
from tests.corpus_support import synthetic_corpus
from tests.pipeline_support import CPU, LABELS, fake_upstream, tiny_config
from tests.schedule_support import ingest


def flatten(batches: list[list[list[int]]]) -> list[int]:
    return [index for global_batch in batches for rank_rows in global_batch for index in rank_rows]


@pytest.mark.parametrize(("rows", "batch_size", "world_size", "sizes"), [
    (13, 32, 1, [[13]]),                      # a day smaller than one batch: one short batch
    (10, 4, 1, [[4], [4], [2]]),              # full batches, then the rest
    (13, 4, 2, [[4, 4], [3, 2]]),             # the rest split across ranks, sizes differing by at most one
    (3, 8, 2, [[2, 1]]),
])
def test_every_row_trains_once_per_epoch_and_a_short_last_batch_is_split_across_ranks(rows, batch_size, world_size,
                                                                                      sizes):
    lengths = [5 + index % 7 for index in range(rows)]
    batches = bucketed_batches(lengths, batch_size, world_size, seed=0, epoch=0)
    assert sorted(flatten(batches)) == list(range(rows))
    assert sorted([len(rank_rows) for rank_rows in global_batch] for global_batch in batches) == sorted(sizes)
    assert batches == bucketed_batches(lengths, batch_size, world_size, seed=0, epoch=0)  # a resume replays it


def test_only_rows_that_cannot_give_every_rank_one_sit_out():
    assert bucketed_batches([4], batch_size=8, world_size=2, seed=0, epoch=0) == []
    batches = bucketed_batches([4] * 17, batch_size=8, world_size=2, seed=0, epoch=0)
    assert len(flatten(batches)) == 16  # one full global batch; the 17th row alone cannot be split over 2 ranks


def small_day(count: int, seed: int) -> list[dict]:
    return synthetic_corpus(count, LABELS, seed=seed)


@pytest.mark.parametrize("count", [10, 13])
def test_a_day_smaller_than_one_batch_trains(tmp_path, count):
    rows = small_day(count + 6, seed=count)
    config = tiny_config(tmp_path, batch_size=32, epochs=3, early_stopping_patience=3)
    result = fit(config, TrainingData(rows[:count], rows[count:], {}), CPU, tmp_path / "checkpoints", None)
    assert result.metrics["steps"] == 3
    assert result.metrics["samples_seen"] == 3 * count
    initial = build_model(config.train, LABELS).state_dict()
    moved = [name for name, value in result.model.state_dict().items() if not torch.equal(value, initial[name])]
    assert "classifier.weight" in moved


def test_accumulation_longer_than_a_small_epoch_still_takes_steps(tmp_path):
    rows = small_day(16, seed=3)
    config = tiny_config(tmp_path, batch_size=4, epochs=2, gradient_accumulation_steps=8, early_stopping_patience=2)
    result = fit(config, TrainingData(rows[:10], rows[10:], {}), CPU, tmp_path / "checkpoints", None)
    # 10 rows in batches of 4: 3 batches an epoch (4, 4, 2), accumulated into one step.
    assert result.metrics["steps"] == 2 and result.metrics["samples_seen"] == 20


def test_a_run_stopped_mid_epoch_resumes_exactly_through_the_short_batch(tmp_path):
    rows = small_day(19, seed=7)
    data = TrainingData(rows[:13], rows[13:], {})
    settings = {"batch_size": 4, "epochs": 3, "checkpoint_every_steps": 1, "early_stopping_patience": 3,
                "dropout": 0.0, "log_every_steps": 1}
    reference = fit(tiny_config(tmp_path / "a", **settings), data, CPU, tmp_path / "a" / "checkpoints", None)

    stopped_at = 6  # epoch 2 of 4 batches (4, 4, 4, 1): mid-epoch, after its short batch or before it

    def sigterm_at_step(metrics, step):
        if step == stopped_at:
            os.kill(os.getpid(), signal.SIGTERM)

    config = tiny_config(tmp_path / "b", **settings)
    previous_handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit, match=f"stopped by SIGTERM at step {stopped_at}"):
            fit(config, data, CPU, tmp_path / "b" / "checkpoints", None, log_metrics=sigterm_at_step)
        resumed = fit(config, data, CPU, tmp_path / "b" / "checkpoints", None)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    assert resumed.metrics["resumed_from_step"] == stopped_at
    for key in ("steps", "samples_seen", "order_digest"):
        assert resumed.metrics[key] == reference.metrics[key], key
    assert reference.metrics["samples_seen"] == 3 * 13


def with_schedule(config, **settings):
    return config.model_copy(update={"schedule": ScheduleConfig(**settings)})


def test_a_day_without_train_rows_is_not_trained_even_without_a_champion_or_forced(tmp_path):
    config = with_schedule(tiny_config(tmp_path), min_new_rows=1)
    store = ArtifactStore(config.artifact_root)
    corpus = synthetic_corpus(60, LABELS, seed=9)
    held_out = [row for row in corpus if split_of(row["id"], config.split) != "train"][:5]
    assert held_out, "the corpus has validation/test rows"
    upstream = ingest(config, store, "run-1", "2026-11-01", held_out)
    for force in (False, True):
        manifest = decide.run(config, {"validate": upstream["validate"]}, run_id="run-1", store=store,
                              logical_date="2026-11-01", champion=False, force=force)
        facts = DecideFacts.of(manifest)
        assert facts.train is False
        assert manifest.metrics["train_split_rows"] == 0
        assert facts.reason.startswith("the snapshots waiting to train have 0 train-split rows, fewer "
                                       "than the 1 a round needs"), facts.reason
        assert ("even though forced" in facts.reason) is force


def test_a_small_day_with_train_rows_trains_when_its_rows_add_up(tmp_path):
    config = with_schedule(tiny_config(tmp_path), min_new_rows=10)
    store = ArtifactStore(config.artifact_root)
    day = synthetic_corpus(13, LABELS, seed=12)
    upstream = fake_upstream(config, store, "run-1", "2026-11-01", [dict(row) for row in day])
    manifest = decide.run(config, {"validate": upstream["validate"]}, run_id="run-1", store=store,
                          logical_date="2026-11-01", champion=True)
    train_rows = sum(row["split"] == "train" for row in upstream_rows(store, upstream))
    assert manifest.metrics["train_split_rows"] == train_rows > 0
    facts = DecideFacts.of(manifest)
    assert facts.train and "13 new rows" in facts.reason


def upstream_rows(store, upstream):
    return read_rows(store.local_path(upstream["clean"].output("dataset").uri))


def test_ranks_the_config_names_are_each_owed_a_row(tmp_path):
    config = tiny_config(tmp_path, nproc_per_node=4)
    verdict, reason = decide.decide(config, has_champion=True, new_rows=500, drift={}, train_rows=3)
    assert not verdict and "3 train-split rows, fewer than the 4 a round needs" in reason
    assert decide.decide(config, has_champion=True, new_rows=500, drift={}, train_rows=4)[0]
    assert decide.training_processes(tiny_config(tmp_path, cpu_processes=2, nnodes=2)) == 4
