"""The word-embedding gradient handled row by row on CPU: same update, a fraction of the memory traffic.

MiniLM's word-embedding matrix is 30522 x 384 (47 MB in fp32) and a batch of 32 synopses touches
~400 of its rows. Left to autograd, every step still allocates and zero-fills the whole 47 MB
gradient, index-adds the batch into it, and `clip_grad_norm_` then reads it once for the norm and
again to scale it: ~12 ms of a ~175 ms bf16 step here, for rows that are all zeros.

`RowSparseEmbeddingGradient` runs the embedding with `sparse=True`, so backward leaves a sparse
gradient whose indices are exactly the rows the step touched, with no zero-fill. Its
`clip_grad_norm_` (the trainer's one call) reads the norm and scales only those rows, every other
row being exactly zero, and writes them into one dense buffer kept for the run, after zeroing the
rows the previous step wrote there. The optimizer then sees a dense gradient, so fused AdamW decays
and updates every row as before: the training is the same, only the summation order inside a row
can differ in the last bit.

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
        self.rows = torch.empty(0, dtype=torch.long, device=self.weight.device)
        embedding.sparse = True

    def clip_grad_norm_(self, parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """`torch.nn.utils.clip_grad_norm_` over `parameters` (which include the embedding weight);
        leaves the embedding's gradient dense, in the buffer."""
        self.buffer.index_fill_(0, self.rows, 0.0)
        sparse = self.weight.grad
        if sparse is None:  # no backward since the last step: like a dense None, the optimizer skips it
            return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        sparse = sparse.coalesce()  # one row per index: micro-batches and repeated tokens summed
        self.rows, touched = sparse.indices()[0], sparse.values()
        others = [p.grad for p in parameters if p.grad is not None and p is not self.weight]
        norms = [torch.nn.utils.get_total_norm(others), torch.linalg.vector_norm(touched)]
        total_norm = torch.linalg.vector_norm(torch.stack(norms))
        # The same coefficient as torch's clip_grad_norm_: max_norm / (norm + 1e-6), capped at 1.
        coefficient = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
        torch._foreach_mul_(others, coefficient)
        self.buffer.index_copy_(0, self.rows, touched * coefficient)
        self.weight.grad = self.buffer
        return total_norm

    def close(self) -> None:
        self.embedding.sparse = False
        self.weight.grad = None
