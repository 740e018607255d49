"""Deterministic, resumable, rank-sharded batch indices: the batch of a step is a pure function of the step.

Axis legend: N items in the dataset, G global batch size (all ranks, one micro-batch), W world size.

The item stream is the concatenation of per-epoch permutations of range(N), each seeded by (seed, epoch). Micro-batch
m of step s takes the G items starting at position (s * accum + m) * G of that stream; rank r takes the r-th of W
contiguous slices. So W ranks together see exactly the items one process would see at the same global batch, no item
is seen twice within an epoch, and resuming at step s needs no sampler state.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EpochSampler"]


class EpochSampler:
    """Indices of each (step, micro-batch, rank) for a dataset of `num_items`.

    Args:
        num_items: N.
        global_batch: G, items per micro-batch summed over ranks.
        grad_accum: micro-batches per optimiser step.
        seed: seed of the epoch permutations.
        shuffle: permute each epoch (False: items in order, useful for evaluation).
    """

    def __init__(self, num_items: int, global_batch: int, grad_accum: int = 1, seed: int = 0, shuffle: bool = True) -> None:
        if num_items < 1:
            raise ValueError(f"the dataset is empty (num_items={num_items})")
        if global_batch < 1 or grad_accum < 1:
            raise ValueError("global_batch and grad_accum must be >= 1")
        self.num_items = num_items
        self.global_batch = global_batch
        self.grad_accum = grad_accum
        self.seed = seed
        self.shuffle = shuffle
        self._cache: dict[int, np.ndarray] = {}

    def _epoch(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) > 4:
                self._cache.clear()
            rng = np.random.default_rng([self.seed, epoch])
            self._cache[epoch] = rng.permutation(self.num_items) if self.shuffle else np.arange(self.num_items)
        return self._cache[epoch]

    def indices(self, step: int, micro: int = 0, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """Item indices for this rank's share of micro-batch `micro` of `step`."""
        if self.global_batch % world_size:
            raise ValueError(f"global batch {self.global_batch} is not divisible by the world size {world_size}")
        if not 0 <= micro < self.grad_accum:
            raise ValueError(f"micro-batch {micro} out of range for grad_accum={self.grad_accum}")
        per_rank = self.global_batch // world_size
        start = (step * self.grad_accum + micro) * self.global_batch + rank * per_rank
        out = np.empty(per_rank, dtype=np.int64)
        filled = 0
        while filled < per_rank:
            pos = start + filled
            epoch, offset = divmod(pos, self.num_items)
            take = min(per_rank - filled, self.num_items - offset)
            out[filled : filled + take] = self._epoch(epoch)[offset : offset + take]
            filled += take
        return out
