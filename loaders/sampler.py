"""Epoch order and rank sharding: a pure function of (seed, epoch), resumable mid-epoch.

Each epoch's order is a permutation drawn from ``numpy.random.default_rng([seed, epoch])``. The
order is padded (by repeating its head) to a multiple of the world size, and rank r takes every
world-th sample starting at r, so ranks are disjoint but for the padding and together cover every
sample. The trainer-facing attributes (`__len__`, `set_epoch`) follow torch's DistributedSampler.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ShardedSampler"]


class ShardedSampler:
    def __init__(self, n: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in 0..{world_size - 1}")
        if n <= 0:
            raise ValueError("cannot sample an empty split")
        self.n, self.rank, self.world_size, self.seed, self.shuffle = n, rank, world_size, seed, shuffle
        self.epoch = 0
        self.num_samples = math.ceil(n / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """This rank's sample indices for `epoch` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        idx = np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        total = self.num_samples * self.world_size
        if total > self.n:
            idx = np.resize(idx, total)  # repeat the head cyclically
        return idx[self.rank : total : self.world_size]

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):  # noqa: ANN204
        return iter(self.order().tolist())
