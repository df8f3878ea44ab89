"""What the trainer consumes: the rows of one round, batched by length, padded per batch."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TrainingData:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    counts: dict[str, int]
    # The run's label set (`labels`, plus those `validate.new_labels: extend` let in); None: the config's labels.
    labels: list[str] | None = None


def bucketed_batches(lengths: Sequence[int], batch_size: int, world_size: int, seed: int, epoch: int,
                     bucket_factor: int = 50) -> list[list[list[int]]]:
    """Global batches for one epoch, each split into one per-rank batch of `batch_size` (the last one may be short).

    Shuffle, then sort by length inside windows of `bucket_factor` global batches so padding is
    small but order stays random; deterministic in (seed, epoch), so a resumed run replays exactly
    the same order and can skip the batches it already did.

    The rows left after the full global batches form one short batch, so a day smaller than a batch
    still trains: they are split evenly across the ranks (sizes differ by at most one), every rank
    getting at least one row; only fewer rows than ranks cannot be split and sit out this epoch
    (the next epoch's shuffle picks others).
    """
    generator = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    generator.shuffle(order)
    global_size = batch_size * world_size
    window = global_size * bucket_factor
    batches: list[list[list[int]]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda index: lengths[index])
        for offset in range(0, len(chunk), global_size):
            block = chunk[offset:offset + global_size]
            if len(block) >= world_size:
                batches.append(split_across_ranks(block, world_size))
    generator.shuffle(batches)
    return batches


def split_across_ranks(block: Sequence[int], world_size: int) -> list[list[int]]:
    """Contiguous per-rank slices of a global batch, sizes differing by at most one (a full batch: equal)."""
    base, extra = divmod(len(block), world_size)
    bounds = [rank * base + min(rank, extra) for rank in range(world_size + 1)]
    return [list(block[bounds[rank]:bounds[rank + 1]]) for rank in range(world_size)]


def rows_in(global_batch: Sequence[Sequence[int]]) -> int:
    """Rows of a global batch over all ranks (a short last batch has fewer than batch_size x ranks)."""
    return sum(len(rank_rows) for rank_rows in global_batch)


def pad_batch(sequences: Sequence[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad token ids to the longest in the batch (what `tokenizer.pad` does, without its overhead)."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, :len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, :len(ids)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
