"""The row-sparse word-embedding gradient (tasks/embedding_rows.py) gives the gradients, clipping and
trained weights of autograd's dense one, and puts the module back as it found it."""

from __future__ import annotations

import torch

from tasks.models.build import build_model, load_tokenizer
from tasks.train import fit
from tasks.training.data import TrainingData
from tasks.training.embedding_rows import RowSparseEmbeddingGradient
from tests.corpus_support import synthetic_corpus
from tests.pipeline_support import CPU, LABELS, max_difference, tiny_config

# Words only one step reads: rows a step wrote and the next does not touch must be cleared.
STEP_WORDS = ["alpha beta gamma", "river mountain forest", "piano violin trumpet"]


def _micro_batches(tokenizer, rows, step: int) -> list[dict[str, torch.Tensor]]:
    texts = [f"{row['text']} {STEP_WORDS[step]}" for row in rows[step * 16:(step + 1) * 16]]
    return [tokenizer(half, padding=True, return_tensors="pt") for half in (texts[:8], texts[8:])]


def test_clipped_gradients_match_autograds_dense_ones_step_after_step(tmp_path):
    config = tiny_config(tmp_path)
    rows = synthetic_corpus(48, LABELS, seed=2)
    targets = torch.tensor([LABELS.index(row["label"]) for row in rows])
    tokenizer = load_tokenizer()
    # eval(): no dropout, so both models compute the same function.
    dense, sparse = build_model(config.train, LABELS).eval(), build_model(config.train, LABELS).eval()
    sparse.load_state_dict(dense.state_dict())
    rows_gradient = RowSparseEmbeddingGradient(sparse.get_input_embeddings())
    for step in range(3):  # later steps must first clear the rows the earlier ones wrote
        dense.zero_grad(set_to_none=True)
        sparse.zero_grad(set_to_none=True)
        for micro, batch in enumerate(_micro_batches(tokenizer, rows, step)):
            labels = targets[step * 16 + micro * 8:step * 16 + (micro + 1) * 8]
            torch.nn.functional.cross_entropy(dense(**batch).logits, labels).backward()
            torch.nn.functional.cross_entropy(sparse(**batch).logits, labels).backward()
        # A small max_norm so that clipping scales every gradient.
        expected_norm = torch.nn.utils.clip_grad_norm_(dense.parameters(), 0.05)
        norm = rows_gradient.clip_grad_norm_(sparse.parameters(), 0.05)
        assert expected_norm > 0.05
        assert torch.allclose(norm, expected_norm, rtol=1e-5)
        embedding_grad = sparse.get_input_embeddings().weight.grad
        assert embedding_grad is rows_gradient.buffer and embedding_grad.layout == torch.strided
        for (name, left), right in zip(dense.named_parameters(), sparse.parameters(), strict=True):
            assert torch.allclose(left.grad, right.grad, rtol=1e-5, atol=1e-9), name
    rows_gradient.close()
    assert not sparse.get_input_embeddings().sparse and sparse.get_input_embeddings().weight.grad is None


def test_training_with_row_sparse_gradient_ends_at_the_dense_runs_weights(tmp_path):
    rows = synthetic_corpus(240, LABELS, seed=5)
    data = TrainingData(rows[:200], rows[200:], {})
    results = {}
    for row_sparse in (False, True):
        config = tiny_config(tmp_path / str(row_sparse), epochs=2, learning_rate=5e-3, gradient_accumulation_steps=2,
                             row_sparse_embedding_grad=row_sparse, checkpoint_every_steps=1000)
        results[row_sparse] = fit(config, data, CPU, tmp_path / str(row_sparse) / "checkpoints", None)
    assert results[True].metrics["row_sparse_embedding_grad"] == 1
    assert results[False].metrics["row_sparse_embedding_grad"] == 0
    assert not results[True].model.get_input_embeddings().sparse
    left, right = results[False].model.state_dict(), results[True].model.state_dict()
    difference = max_difference(left, right)
    assert difference < 1e-5, difference
