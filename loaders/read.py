"""Read stage: a sample's payload from its source, under the loader's `on_error` policy.

The policy is the one place that decides what a bad record does to an epoch (webdataset's
handlers, in spirit): ``"raise"`` its typed error (naming the store and record), or ``"skip"`` it —
log it, count it, and use the next sample of the split instead, so the batch keeps its size. Every
stage that can meet a bad record (the CRC check on read, the header probe, the decode — on the CPU
or in DALI) runs inside `ErrorPolicy.run`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from loaders.sources import Source
from sainet.core.errors import ImageError, SainetError, StoreError
from sainet.core.imaging import probe

__all__ = ["ON_ERROR", "ErrorPolicy", "read_encoded"]

log = logging.getLogger(__name__)

T = TypeVar("T")
ON_ERROR = ("raise", "skip")
SKIP_TRIES = 16  # bad samples in a row before a "skip" loader gives up (the store is likely broken)


class ErrorPolicy:
    """Apply `on_error` to the records of one source; `skipped` counts what was skipped."""

    def __init__(self, source: Source, on_error: str) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}")
        self.source, self.on_error = source, on_error
        self.skipped = 0
        self._lock = threading.Lock()  # decode threads skip concurrently

    def run(self, i: int, attempt: Callable[[int], T]) -> T:
        """`attempt(i)`; on a bad record raise, or log, count and try the next sample."""
        tries = 0
        n = len(self.source)
        while True:
            try:
                return attempt(i)
            except (ImageError, StoreError) as e:
                self.failed(i, e)
                tries += 1
                if tries >= SKIP_TRIES:
                    raise SainetError(f"{tries} bad samples in a row near {self.source.describe(i)}; giving up") from e
                i = (i + 1) % n

    def failed(self, i: int, error: SainetError) -> None:
        """Record that sample i is bad: raises `error` under ``"raise"``, else logs and counts it."""
        if self.on_error == "raise":
            raise error
        with self._lock:
            self.skipped += 1
        log.warning("skipping %s: %s", self.source.describe(i), error)


def read_encoded(source: Source, i: int) -> np.ndarray:
    """Sample i's encoded bytes as a uint8 array (zero-copy view of the store), its CRC (when the
    source verifies) and image header checked: what a decoder outside this process (DALI) needs."""
    payload = source.payload(i)
    probe(payload, source.describe(i))
    return np.frombuffer(payload, np.uint8)
