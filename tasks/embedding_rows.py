"""The word-embedding gradient handled row by row on CPU: same update, a fraction of the memory traffic.

MiniLM's word-embedding matrix is 30522 x 384 (47 MB in fp32) and a batch of 32 synopses touches
~400 of its rows. Left to autograd, every step still allocates and zero-fills the whole 47 MB
gradient, index-adds the batch into it, and `clip_grad_norm_` then reads it once for the norm and
again to scale it: ~12 ms of a ~175 ms bf16 step here, for rows that are all zeros.

`RowSparseEmbeddingGradient` keeps one dense gradient buffer for the run instead. The embedding
runs with `sparse=True`, so backward hands autograd a sparse gradient that it adds into the dense
buffer (`dense += sparse` touches only the listed rows); before the next step only the rows touched
last time are zeroed; and the clipping norm and scale read only the touched rows, every other row
being exactly zero. The optimizer still sees a dense gradient, so fused AdamW decays and updates
every row as before: the training is the same, only the summation order inside a row can differ in
the last bit.

One process only: under DDP the reducer all-reduces the full dense gradient anyway, and each rank's
touched rows would have to be merged first, so there the trainer keeps autograd's dense gradient.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class RowSparseEmbeddingGradient:
    """Owns the gradient of `embedding.weight` for one training run; `close()` restores the module."""

    def __init__(self, embedding: torch.nn.Embedding) -> None:
        self.embedding = embedding
        self.weight = embedding.weight
        self.buffer = torch.zeros_like(self.weight)
        self.weight.grad = self.buffer
        self.rows = torch.empty(0, dtype=torch.long, device=self.weight.device)
        self._batch_rows: list[torch.Tensor] = []
        embedding.sparse = True

    def zero_grad(self) -> None:
        """Call after `optimizer.zero_grad(set_to_none=True)`: zeroes last step's rows, re-attaches the buffer."""
        if self.rows.numel():
            self.buffer.index_fill_(0, self.rows, 0.0)
        self.rows = self.rows[:0]
        self._batch_rows.clear()
        self.weight.grad = self.buffer

    def touch(self, input_ids: torch.Tensor) -> None:
        """Record the rows a micro-batch's forward reads (and so its backward writes)."""
        self._batch_rows.append(input_ids.reshape(-1))

    def clip_grad_norm_(self, parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """`torch.nn.utils.clip_grad_norm_` over `parameters` (which include the embedding weight)."""
        if self._batch_rows:
            self.rows = torch.unique(torch.cat(self._batch_rows))
            self._batch_rows.clear()
        others = [p.grad for p in parameters if p.grad is not None and p is not self.weight]
        touched = self.buffer.index_select(0, self.rows)
        norms = [torch.nn.utils.get_total_norm(others), torch.linalg.vector_norm(touched)]
        total_norm = torch.linalg.vector_norm(torch.stack(norms))
        # The same coefficient as torch's clip_grad_norm_: max_norm / (norm + 1e-6), capped at 1.
        coefficient = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
        torch._foreach_mul_(others, coefficient)
        self.buffer.index_copy_(0, self.rows, touched.mul_(coefficient))
        return total_norm

    def close(self) -> None:
        self.embedding.sparse = False
        self.weight.grad = None
