"""Epoch order and rank sharding: a pure function of (seed, epoch), resumable mid-epoch.

Each epoch's order is a permutation drawn from ``numpy.random.default_rng([seed, epoch])`` (the
identity when not shuffling), the same on every rank. Rank r of world w then takes its share:

* **training** (``pad=True``): the order is extended to ``ceil(n / w) * w`` entries by appending
  its first ``ceil(n / w) * w - n`` entries again, and rank r takes every w-th entry starting at
  r. Together the ranks see every record exactly once per epoch, plus at most ``w - 1`` repeats
  (the padding, drawn from the head of this epoch's permutation, so it changes with the epoch and
  is the same on every rank). Every rank gets the same number of samples, hence takes the same
  number of steps: DDP's gradient all-reduce would wait forever for a rank that stopped early.

      n = 10, w = 4, order = [7 2 9 0 4 1 8 3 6 5]  ->  padded [7 2 9 0 4 1 8 3 6 5 | 7 2]
      rank 0: 7 4 6   rank 1: 2 1 5   rank 2: 9 8 7   rank 3: 0 3 2      (7 and 2 twice)

* **evaluation** (``pad=False``): rank r takes the contiguous slice
  ``order[r * n // w : (r + 1) * n // w]``; no record is repeated, so every validation image
  is counted once when the ranks' statistics are gathered (slices differ in length by at most 1).

The trainer-facing attributes (`__len__`, `set_epoch`) follow torch's DistributedSampler. Once
`set_epoch` has been called (`epoch_set`), the loader takes each pass's epoch from the sampler (the
trainer drives it) instead of counting passes itself.

**Elastic resume** (`resume`): for one epoch, the first `skip` entries of its order were consumed
by an earlier run (with any number of ranks); that epoch's order is then the rest, padded and
sharded over this world size as above (the padding drawn from the head of the rest). Other epochs
are unchanged. `__len__` stays the full epoch's (what the trainer's schedule counts).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

__all__ = ["ShardedSampler", "padding"]


def padding(n: int, world_size: int) -> int:
    """Records repeated per training epoch so that `n` splits evenly over `world_size` ranks (< world_size)."""
    return math.ceil(n / world_size) * world_size - n


class ShardedSampler:
    def __init__(self, n: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True,
                 pad: bool = True) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in 0..{world_size - 1} (world size {world_size})")
        if n <= 0:
            raise ValueError("cannot sample an empty split")
        self.n, self.rank, self.world_size, self.seed, self.shuffle, self.pad = n, rank, world_size, seed, shuffle, pad
        self.epoch = 0
        self.epoch_set = False  # set_epoch was called: the caller (the trainer) picks each epoch
        self._skip: tuple[int, int] | None = None  # (epoch, entries of its order already consumed)
        if pad:
            self.num_samples = math.ceil(n / world_size)
        else:
            self.num_samples = (rank + 1) * n // world_size - rank * n // world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.epoch_set = True

    def resume(self, epoch: int, skip: int) -> None:
        """Epoch `epoch` continues after the first `skip` entries of its order (0: from the start)."""
        if not 0 <= skip <= self.n:
            raise ValueError(f"cannot skip {skip} of {self.n} records")
        self._skip = (int(epoch), int(skip)) if skip else None

    def skipped(self, epoch: int | None = None) -> int:
        epoch = self.epoch if epoch is None else epoch
        return self._skip[1] if self._skip and self._skip[0] == epoch else 0

    def permutation(self, epoch: int | None = None) -> np.ndarray:
        """The whole split's order for `epoch`, the same on every rank."""
        epoch = self.epoch if epoch is None else epoch
        return np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """This rank's sample indices for `epoch` (default: the current one)."""
        idx = self.permutation(epoch)
        w, r = self.world_size, self.rank
        if not self.pad:
            return idx[r * self.n // w : (r + 1) * self.n // w]
        idx = idx[self.skipped(self.epoch if epoch is None else epoch):]
        if not len(idx):
            return idx
        # np.resize repeats the order from its head (cyclically, should there be fewer records than ranks)
        return np.resize(idx, len(idx) + padding(len(idx), w))[r::w]

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())
