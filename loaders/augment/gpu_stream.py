"""Hand a batch built on the loader's own CUDA stream over to the consumer's stream.

A loader thread that enqueues work on the default stream waits behind every queued training
kernel (DESIGN.md, GPU facts); on its own stream it overlaps them. The consumer must then not read
the batch before the loader's work is done (wait on an event, no host sync), and the caching
allocator must not hand the batch's memory to the loader stream again while the consumer still
uses it (`record_stream`).

    producer = LoaderStream(device)
    with producer.active():
        img = render_batch(plan, sources, scales, stream=producer.stream)
    batch = {"img": img, ...}; ready = producer.ready()     # put (batch, ready) in the queue
    ...
    accept(batch, ready)                                    # in the consumer, before using batch
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = ["LoaderStream", "accept"]


class LoaderStream:
    """The loader's CUDA stream on `device` and the event that says a batch is ready."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device)

    @contextlib.contextmanager
    def active(self) -> Iterator[torch.cuda.Stream]:
        """Make the loader stream current in this thread (torch's current stream is per thread)."""
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            yield self.stream

    def ready(self) -> torch.cuda.Event:
        """An event recorded after everything enqueued on the loader stream so far."""
        event = torch.cuda.Event()
        event.record(self.stream)
        return event


def accept(batch: Mapping[str, Any], ready: torch.cuda.Event | None, stream: torch.cuda.Stream | None = None) -> None:
    """Make `stream` (default: the current one) wait for `ready` and mark the batch's CUDA tensors
    as used there. Returns at once: the wait happens on the device."""
    if ready is None:
        return
    stream = stream or torch.cuda.current_stream()
    stream.wait_event(ready)
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.is_cuda:
            value.record_stream(stream)
