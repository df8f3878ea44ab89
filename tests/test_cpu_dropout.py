"""CPU dropout with numpy PCG64 masks (tasks/cpu_dropout.py): the same Bernoulli dropout as torch's,
masks that depend only on (seed, rank, epoch, batch), attention identical to transformers' own, and
a training run that stops on SIGTERM and resumes ending with exactly the uninterrupted weights."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from tasks.models.build import build_model, load_tokenizer
from tasks.train import fit
from tasks.training.cpu_dropout import ATTENTION, CpuDropout, MaskStream, use_fast_cpu_dropout
from tasks.training.data import TrainingData
from tests.corpus_support import synthetic_corpus
from tests.pipeline_support import CPU, LABELS, max_difference, tiny_config


def test_masks_keep_one_minus_p_and_scale_by_its_inverse():
    keep, scale = MaskStream(seed=0, rank=0).keep(torch.Size([1000, 1000]), 0.1)
    assert keep.dtype == torch.bool and keep.shape == (1000, 1000)
    # One million Bernoulli(0.9) draws: the standard error of the rate is 3e-4.
    assert abs(float(keep.float().mean()) - 0.9) < 0.0015
    assert scale == pytest.approx(1 / 0.9, rel=1e-4)
    # Rows and columns are not correlated (a bad view of the random bits would stripe them).
    assert float(keep.float().mean(dim=0).std()) < 0.05 and float(keep.float().mean(dim=1).std()) < 0.05


def test_masks_depend_only_on_seed_rank_and_position():
    shape = torch.Size([64, 48])
    first, again = MaskStream(seed=3, rank=0), MaskStream(seed=3, rank=0)
    first.at_batch(1, 7)
    mask, _ = first.keep(shape, 0.2)
    again.keep(shape, 0.2)  # draws elsewhere first, then moves to the same position
    again.at_batch(1, 7)
    assert torch.equal(again.keep(shape, 0.2)[0], mask)
    other_rank = MaskStream(seed=3, rank=1)
    other_rank.at_batch(1, 7)
    assert not torch.equal(other_rank.keep(shape, 0.2)[0], mask)
    first.at_batch(1, 8)
    assert not torch.equal(first.keep(shape, 0.2)[0], mask)


def test_dropout_forward_and_backward_use_the_same_mask():
    stream = MaskStream(seed=0, rank=0)
    dropout = CpuDropout(0.25, stream)
    hidden = torch.randn(32, 12, 16, requires_grad=True)
    stream.at_batch(0, 0)
    output = dropout(hidden)
    stream.at_batch(0, 0)
    keep, scale = stream.keep(hidden.shape, 0.25)
    assert torch.allclose(output, torch.where(keep, hidden * scale, 0.0))
    output.sum().backward()
    assert torch.allclose(hidden.grad, keep.float() * scale)
    dropout.eval()
    assert dropout(hidden) is hidden
    assert CpuDropout(0.0, stream).train()(hidden) is hidden


def test_swapped_model_computes_what_transformers_computes_and_is_restored(tmp_path):
    config = tiny_config(tmp_path)
    model = build_model(config.train, LABELS).eval()
    tokenizer = load_tokenizer()
    # Different lengths: the padding mask must reach the attention function in its eager form.
    batch = tokenizer(["a short one", "a much longer text with several more words in it"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        reference = model(**batch).logits
    standard = model.config._attn_implementation
    restore = use_fast_cpu_dropout(model, MaskStream(seed=0, rank=0))
    dropouts = [module for module in model.modules() if isinstance(module, CpuDropout)]
    assert len(dropouts) == 3 * config.train.tiny.num_hidden_layers + 2  # + embeddings and classifier
    assert not any(type(module) is torch.nn.Dropout for module in model.modules())
    assert model.config._attn_implementation == ATTENTION
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, reference, atol=1e-5)
        model.train()
        assert not torch.allclose(model(**batch).logits, reference, atol=1e-3)  # dropout is on
    restore()
    assert not any(isinstance(module, CpuDropout) for module in model.modules())
    assert model.config._attn_implementation == standard
    model.save_pretrained(tmp_path / "saved")
    assert ATTENTION not in (tmp_path / "saved" / "config.json").read_text()


def _train(tmp_path, rows, stop_at_step: int | None = None, **settings):
    config = tiny_config(tmp_path, **{"epochs": 2, "learning_rate": 5e-3, "checkpoint_every_steps": 1000,
                                      "log_every_steps": 1, **settings})

    def log(values, step):
        if step == stop_at_step:
            os.kill(os.getpid(), signal.SIGTERM)  # what Airflow's on_kill or an eviction sends

    data = TrainingData(rows[:200], rows[200:], {})
    return fit(config, data, CPU, tmp_path / "checkpoints", None, log_metrics=log)


def test_a_run_stopped_by_sigterm_resumes_to_the_uninterrupted_weights_with_dropout_on(tmp_path):
    rows = synthetic_corpus(240, LABELS, seed=5)
    previous_handler = signal.getsignal(signal.SIGTERM)
    try:
        uninterrupted = _train(tmp_path / "a", rows)
        with pytest.raises(SystemExit, match="stopped by SIGTERM at step 5; checkpoint saved"):
            _train(tmp_path / "b", rows, stop_at_step=5)
        resumed = _train(tmp_path / "b", rows)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    assert uninterrupted.metrics["fast_cpu_dropout"] == 1
    assert resumed.metrics["resumed_from_step"] == 5
    assert resumed.metrics["order_digest"] == uninterrupted.metrics["order_digest"]
    left, right = uninterrupted.model.state_dict(), resumed.model.state_dict()
    difference = max_difference(left, right)
    assert difference < 1e-6, difference


def test_torch_dropout_remains_available(tmp_path):
    rows = synthetic_corpus(240, LABELS, seed=5)
    result = _train(tmp_path, rows, fast_cpu_dropout=False, epochs=1)
    assert result.metrics["fast_cpu_dropout"] == 0
    assert any(type(module) is torch.nn.Dropout for module in result.model.modules())
