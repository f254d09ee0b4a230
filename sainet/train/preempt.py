"""Preemption: SIGTERM or SIGUSR1 asks a run to stop; it finishes the step, saves, and exits for a requeue.

Schedulers stop a job with SIGTERM and kill it after a grace period (SLURM: ``KillWait``, 30 s by
default); SLURM can also send SIGUSR1 ahead of the end (``sbatch --signal=USR1@120``). While a
`Preemption` is installed (`SainetTrainer.train`), the first of those signals only sets a flag. At
the end of the current training step every rank asks whether any rank got one (`distributed.any_rank`,
one small all-reduce per step), so all ranks stop at the same step: the mid-epoch checkpoint is
written (``weights/mid_epoch.pt``, atomically), rank 0 writes `MARKER` into the run folder, and
every rank raises `Preempted`, whose exit code `PREEMPTED_EXIT` (75, EX_TEMPFAIL) tells a
scheduler script to requeue; ``--resume RUN/weights/last.pt`` then continues the epoch with the
samples not yet seen (`sainet.train.checkpoint.latest_checkpoint` picks the mid-epoch file).

Signals often arrive twice (SLURM signals every process of a step, and torchrun's agent forwards
its own SIGTERM to its workers): a repeat is ignored; the scheduler's SIGKILL after the grace period
is the hard stop. A signal during validation or at an epoch's last step is acted on at the first
step of the next epoch, after last.pt is saved.

Under torchrun the agent itself must not get SIGUSR1 (its default action kills it, and then its
workers): the launcher (`sainet.train.launch`) and the SLURM recipe in the README turn SIGUSR1 into
a SIGTERM to the agent, which forwards it to its workers and gives them 30 s before SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from sainet.core.errors import SainetError

__all__ = ["MARKER", "PREEMPTED_EXIT", "SIGNALS", "Preempted", "Preemption", "clear_marker", "preempted_run",
           "write_marker"]

log = logging.getLogger(__name__)
#: The exit code of a preempted run (EX_TEMPFAIL): "stopped on request, checkpoint saved, requeue me".
PREEMPTED_EXIT = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
#: Written into the run folder by rank 0 of a preempted run; removed when the run starts again.
MARKER = "preempted.json"


class Preempted(SainetError):
    """The run stopped on SIGTERM/SIGUSR1 after saving a checkpoint; resume it (requeue the job)."""

    exit_code = PREEMPTED_EXIT


class Preemption:
    """The flag the signal handlers set; `installed` puts the handlers in place for a block."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        if self.signal is not None:
            log.info("%s received again: already stopping", signal.Signals(signum).name)
            return
        self.signal = signum
        log.warning("%s received: stopping after this step, with a checkpoint", signal.Signals(signum).name)

    @contextlib.contextmanager
    def installed(self) -> Iterator[Preemption]:
        """Handlers for `SIGNALS` for the block (only in the main thread; elsewhere nothing changes)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        before = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, h in before.items():
                signal.signal(s, h)


def write_marker(run: str | os.PathLike[str], info: dict) -> None:
    from sainet.train.checkpoint import atomic_write_bytes

    atomic_write_bytes(Path(run) / MARKER, json.dumps(info, indent=2).encode())


def clear_marker(run: str | os.PathLike[str]) -> None:
    (Path(run) / MARKER).unlink(missing_ok=True)


def preempted_run(run: str | os.PathLike[str]) -> dict | None:
    """The marker of a run that stopped on preemption (None if it did not)."""
    path = Path(run) / MARKER
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
