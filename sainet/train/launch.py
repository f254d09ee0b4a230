"""The launcher: ``sainet train --device 0,1`` starts torchrun with one rank per GPU and waits for it.

Each rank runs `sainet.train.rank` (the entry point apart from this launcher), which trains the
request as that rank; `sainet.train.distributed` holds the topology and collectives both use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sainet.train.distributed import DistributedError, per_rank_batch
from sainet.train.preempt import MARKER, Preempted, preempted_run

__all__ = ["launch", "launch_request"]

log = logging.getLogger(__name__)


def launch(request: dict[str, Any], nproc: int) -> int:
    """Run `request` (a `sainet.settings.TrainSettings` as `to_dict` writes it) on `nproc` local ranks through
    torchrun; returns torchrun's exit code. torchrun runs in its own session, and that whole
    process group is killed on the way out (also on Ctrl-C), so no rank outlives this call."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="sainet-dist-", delete=False) as f:
        json.dump(request, f)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "sainet.train.rank", f.name]
    log.info("starting %d ranks: %s", nproc, " ".join(cmd))
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        with _forward_preemption(proc):
            return proc.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM if proc.poll() is None else signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        Path(f.name).unlink(missing_ok=True)


@contextlib.contextmanager
def _forward_preemption(proc: subprocess.Popen) -> Iterator[None]:
    """While torchrun runs: SIGTERM or SIGUSR1 here becomes a SIGTERM to torchrun's agent, which
    forwards it to the ranks (`sainet.train.preempt`: they save and exit for a requeue)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, frame: Any) -> None:  # noqa: ARG001
        log.warning("%s: asking the ranks to save and stop", signal.Signals(signum).name)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)

    before = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def launch_request(req: Any, overrides: dict[str, Any], nproc: int) -> Path:
    """`launch` a `TrainRequest` whose resolved Ultralytics `overrides` are given; returns the run folder.

    The folder is chosen here (``name``, ``name2``... as Ultralytics would) and handed to the ranks,
    so that the caller knows where the results are. Callbacks cannot travel to other processes and
    are dropped with a warning."""
    from ultralytics.cfg import DEFAULT_CFG, get_cfg, get_save_dir

    per_rank_batch(int(overrides["batch"]), nproc)  # refuse before starting anything
    if req.callbacks:
        log.warning("callbacks are not passed to the %d spawned ranks; start torchrun yourself to use them", nproc)
    request = req.to_dict()  # the settings file each rank reads (`sainet.train.rank`)
    if overrides.get("resume"):
        save_dir = Path(overrides["resume"]).resolve().parent.parent
    else:
        save_dir = Path(get_save_dir(get_cfg(DEFAULT_CFG, overrides)))
        request["sets"] = {**request["sets"], "save_dir": str(save_dir)}
    rc = launch(request, nproc)
    if rc and preempted_run(save_dir):  # torchrun reports any rank's non-zero exit as its own 1
        raise Preempted(f"the {nproc} ranks stopped on SIGTERM/SIGUSR1 with a checkpoint ({save_dir / MARKER}); "
                        f"continue with --resume {save_dir / 'weights' / 'last.pt'}")
    if rc:
        raise DistributedError(f"distributed training failed: torchrun exited with {rc} (the failing rank's error is above)")
    return save_dir
