"""Waiting for data as the GPU sees it (issue 21).

A GPU loader hands a batch over before its pixels exist: the consumer's stream waits on an event
(`loaders.dali.DaliAssembler.hand_off`), so the host's ``next(loader)`` returns at once while the
GPU may sit idle until the render ends. Host timers then show no data-wait for a loader that is
GPU-bound. On CUDA:

- `StallClock` brackets each ``next()`` with two timing events on the consumer's stream: the time
  between them is how long that stream stood still for data (its earlier work done, the batch not
  yet ready, or the host still waiting for it), measured by the GPU;
- `settle` makes the consumer's stream catch up with a batch before the bench counts it.

Elsewhere (CPU training, CPU tensors) both fall back to the host clock / do nothing. The choice is
`clock_kind`, a pure function of the device and whether CUDA is present.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["StallClock", "clock_kind", "settle"]


def clock_kind(device: torch.device | str | None, cuda_available: bool | None = None) -> str:
    """``"cuda"`` when `device` is a CUDA device and CUDA is present, else ``"host"``."""
    d = torch.device(device) if device is not None else torch.device("cpu")
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    return "cuda" if d.type == "cuda" and available else "host"


class StallClock:
    """Sums the consumer stream's stalls around ``next(loader)`` (CUDA), or nothing (host)."""

    def __init__(self, device: torch.device | str | None) -> None:
        self.kind = clock_kind(device)
        self.device = torch.device(device) if self.kind == "cuda" else None
        self._pairs: list[tuple[Any, Any]] = []

    def _event(self) -> Any:
        e = torch.cuda.Event(enable_timing=True)
        e.record(torch.cuda.current_stream(self.device))
        return e

    def start(self) -> Any:
        """Before ``next()``: a token for `stop` (None on the host clock)."""
        return self._event() if self.kind == "cuda" else None

    def stop(self, token: Any) -> None:
        """After ``next()`` returned (and the batch was handed over)."""
        if token is not None:
            self._pairs.append((token, self._event()))

    def seconds(self) -> float | None:
        """The stalls since the last call, in seconds (None on the host clock). Waits for the last
        event only: call it once per log row, not per batch."""
        if self.kind != "cuda":
            return None
        if not self._pairs:
            return 0.0
        self._pairs[-1][1].synchronize()
        total = sum(a.elapsed_time(b) for a, b in self._pairs) / 1e3
        self._pairs.clear()
        return total


def settle(img: Any) -> None:
    """Wait until the current stream has finished everything queued before `img` was handed over
    (its render included) when `img` is a CUDA tensor; nothing otherwise (bench throughput)."""
    if isinstance(img, torch.Tensor) and img.is_cuda:
        torch.cuda.current_stream(img.device).synchronize()
