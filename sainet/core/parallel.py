"""Ordered, bounded parallel map: the one helper `check` and `pack` both stream through."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from sainet.core.topology import TorchrunEnv

__all__ = ["default_threads", "ordered_map"]

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], depth: int) -> Iterator[R]:
    """`pool.map` over a (possibly endless) iterable, results in order, at most `depth` in flight,
    so memory stays bounded however long the input is."""
    pending: list[Future] = []
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= depth:
            yield pending.pop(0).result()
    for f in pending:
        yield f.result()


def default_threads(cores: int | None = None, recommended: int | None = None, ranks: int | None = None) -> int:
    """Decode threads per rank when none are asked for: the profile's recommendation (8 without
    one), never more than this rank's share of the cores — `cores` (default: this host's) divided
    by `ranks` on the node (default: ``LOCAL_WORLD_SIZE``, which torchrun sets; 1 otherwise)."""
    ranks = ranks or TorchrunEnv.from_env().local_world_size or 1
    share = (cores or os.cpu_count() or 2) // max(1, ranks)
    return max(1, min(recommended or 8, share))
