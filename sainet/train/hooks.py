"""Every place sainet's trainer reaches into Ultralytics beyond its documented customisation points.

Ultralytics documents subclassing ``DetectionTrainer`` and overriding ``get_dataloader``,
``get_model``, ``get_dataset``, ``resume_training``, ``final_eval``, ``plot_training_labels`` and
adding callbacks; `sainet.train.trainer.SainetTrainer` does that. What it does beyond that is here,
each entry watched by ``tests/test_resume.py::test_private_ultralytics_apis_are_as_hooked`` against
the installed (pinned) Ultralytics, which fails naming the entry should one be renamed or changed:

=============================================  ==========  ===================================================
Ultralytics API (private)                      how         why
=============================================  ==========  ===================================================
``ultralytics.engine.trainer.nn``              rebound     during ``_setup_train`` only: DDP of a CPU model
                                                           (`ddp_device_ids_for_cpu`)
``BaseTrainer._setup_ddp(self)``               overridden  a no-op: the process group exists since __init__
``BaseTrainer._setup_train(self)``             overridden  wrapped in the ``nn`` rebinding, then the ranks agree
``BaseTrainer._load_checkpoint_state(self,     called      a mid-epoch resume restores optimizer, EMA, scaler,
ckpt)``                                                    best fitness, stopper as Ultralytics' resume does
``BaseTrainer.save_model(self)``: its layout   copied      the mid-epoch checkpoint has last.pt's keys
(`CHECKPOINT_KEYS`)                                        (`checkpoint_dict`), so ``--resume`` accepts it
``BaseTrainer.save_model``: ``self.last`` /    made        those three attributes become `AtomicPath`s, whose
``self.best`` / ``self.wdir / "epochN.pt"``    atomic      ``write_bytes`` writes beside + fsync + rename
``.write_bytes``                                           (`atomic_checkpoints`)
``ultralytics.engine.trainer.strip_optimizer`` rebound     during ``final_eval`` only: the stripped last.pt /
``(f, s, updates)``                                        best.pt are written atomically too
                                                           (`atomic_strip_optimizer`)
``ultralytics.engine.trainer.check_amp``       rebound     on CUDA, for good: a local AMP check instead of one
                                                           that downloads a model (`sainet.train.offline`)
``ultralytics.utils.tqdm.                      rebound     during ``train`` when stdout is not a terminal: each
is_noninteractive_console()``                              progress bar writes its final line only, no ``\r``
                                                           and ANSI frames in a log file; Ultralytics' log
                                                           lines lose their colour codes too (a logging
                                                           filter, public API) (`plain_console_output`)
``ultralytics.utils.tqdm.TQDM.desc``           property    in the same context: a bar's description loses
                                                           its colour codes, set at init or later
                                                           (``train: Scanning ...``)
=============================================  ==========  ===================================================

The rebindings but ``check_amp`` replace a module global of Ultralytics for the duration of one call
and restore it after (also on an error); nothing is patched at import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import types
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sainet.train.checkpoint import AtomicPath, atomic_file

__all__ = ["PRIVATE_APIS", "CHECKPOINT_KEYS", "PrivateApi", "atomic_checkpoints", "atomic_strip_optimizer",
           "checkpoint_dict", "ddp_device_ids_for_cpu", "load_checkpoint_state", "plain_console_output",
           "strip_optimizer_atomic"]

#: The keys of Ultralytics' resumable checkpoint (``BaseTrainer.save_model``) that `checkpoint_dict` writes.
CHECKPOINT_KEYS = ("epoch", "best_fitness", "stopper", "model", "ema", "updates", "optimizer", "scaler", "train_args",
                   "train_metrics", "date", "version")


@dataclass(frozen=True)
class PrivateApi:
    """One private Ultralytics API sainet relies on: where it is, its parameters, what its source must contain."""

    owner: str  # "module" or "module:Class"
    name: str
    params: tuple[str, ...] | None  # None: not a function (a module global)
    source_has: tuple[str, ...] = ()  # text the owner's function must still contain for the hook to work
    how: str = ""


_T = "ultralytics.engine.trainer"
PRIVATE_APIS: tuple[PrivateApi, ...] = (
    PrivateApi(_T, "nn", None, how="rebound in ddp_device_ids_for_cpu"),
    PrivateApi(f"{_T}:BaseTrainer", "_setup_train", ("self",), ("nn.parallel.DistributedDataParallel(",), "overridden"),
    PrivateApi(f"{_T}:BaseTrainer", "_setup_ddp", ("self",), (), "overridden"),
    PrivateApi(f"{_T}:BaseTrainer", "_load_checkpoint_state", ("self", "ckpt"), (), "called"),
    PrivateApi(f"{_T}:BaseTrainer", "save_model", ("self",),
               ("self.last.write_bytes(", "self.best.write_bytes(", "(self.wdir / f\"epoch", *(f'"{k}"' for k in CHECKPOINT_KEYS)),
               "layout copied; attributes made atomic"),
    PrivateApi(_T, "strip_optimizer", ("f", "s", "updates"), ("torch.save(",), "rebound in atomic_strip_optimizer"),
    PrivateApi(f"{_T}:BaseTrainer", "final_eval", ("self",), ("strip_optimizer(",), "overridden; calls the rebound"),
    PrivateApi(_T, "check_amp", None, how="rebound in sainet.train.offline.replace_amp_check"),
    PrivateApi(f"{_T}:BaseTrainer", "_setup_train", ("self",), ("check_amp(",), "calls the rebound check_amp"),
    PrivateApi("ultralytics.utils.tqdm", "is_noninteractive_console", (), how="rebound in plain_console_output"),
    PrivateApi("ultralytics.utils", "remove_colorstr", ("input_string",), how="called in plain_console_output"),
    PrivateApi("ultralytics.utils.tqdm:TQDM", "__init__", None, ("is_noninteractive_console()", "self.desc = desc"),
               "reads the rebound check per bar; sets desc, which plain_console_output makes a property"),
)


@contextlib.contextmanager
def ddp_device_ids_for_cpu(active: bool) -> Iterator[None]:
    """Let Ultralytics' DDP wrapping run on CPU ranks.

    `BaseTrainer._setup_train` wraps the model with ``nn.parallel.DistributedDataParallel(model,
    device_ids=[self.device.index])``: ``[None]`` on CPU, which DDP rejects (CPU modules take
    ``device_ids=None``). No argument or hook changes that call, so for its duration the module
    global ``nn`` of ``ultralytics.engine.trainer`` is replaced by a view of torch.nn whose DDP
    drops ``[None]``.
    """
    if not active:
        yield
        return
    import torch
    import ultralytics.engine.trainer as ut

    real = ut.nn

    def ddp(module: Any, device_ids: Any = None, **kw: Any) -> Any:
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=None if device_ids == [None] else device_ids, **kw)

    shim = types.SimpleNamespace(**{k: getattr(torch.nn, k) for k in dir(torch.nn) if not k.startswith("__")})
    shim.parallel = types.SimpleNamespace(DistributedDataParallel=ddp)
    ut.nn = shim
    try:
        yield
    finally:
        ut.nn = real


def atomic_checkpoints(trainer: Any) -> None:
    """Make the paths ``save_model`` writes through (``wdir``, ``last``, ``best``) `AtomicPath`s."""
    trainer.wdir = AtomicPath(trainer.wdir)
    trainer.last, trainer.best = AtomicPath(trainer.last), AtomicPath(trainer.best)


def strip_optimizer_atomic(f: str | Path = "best.pt", s: str = "", updates: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ultralytics' ``strip_optimizer``, writing its result (`s`, else `f` in place) atomically."""
    from ultralytics.utils.torch_utils import strip_optimizer

    with atomic_file(s or f) as tmp:
        return strip_optimizer(f, str(tmp), updates)


@contextlib.contextmanager
def atomic_strip_optimizer() -> Iterator[None]:
    """For the duration: ``ultralytics.engine.trainer.strip_optimizer`` is `strip_optimizer_atomic`."""
    import ultralytics.engine.trainer as ut

    real = ut.strip_optimizer
    ut.strip_optimizer = strip_optimizer_atomic
    try:
        yield
    finally:
        ut.strip_optimizer = real


def load_checkpoint_state(trainer: Any, ckpt: dict) -> None:
    """Optimizer, scaler, EMA, best fitness and stopper from `ckpt`, as Ultralytics' resume restores them."""
    trainer._load_checkpoint_state(ckpt)


def checkpoint_dict(trainer: Any, **extra: Any) -> dict[str, Any]:
    """A resumable checkpoint with the layout of Ultralytics' ``save_model`` (`CHECKPOINT_KEYS`), plus `extra`."""
    from copy import deepcopy

    from ultralytics import __version__

    ckpt = {
        "epoch": trainer.epoch, "best_fitness": trainer.best_fitness,
        "stopper": {"best_fitness": trainer.stopper.best_fitness, "best_epoch": trainer.stopper.best_epoch},
        "model": None, "ema": deepcopy(trainer.ema.ema), "updates": trainer.ema.updates,
        "optimizer": deepcopy(trainer.optimizer.state_dict()), "scaler": trainer.scaler.state_dict(),
        "train_args": vars(trainer.args), "train_metrics": {**(trainer.metrics or {}), "fitness": trainer.fitness},
        "date": datetime.now().astimezone().isoformat(), "version": __version__,
    }
    return {**ckpt, **extra}


_NONE = object()


def _wants_plain(stream: Any) -> bool:
    """Plain output unless `stream` is a terminal; NO_COLOR (https://no-color.org) asks for it anyway."""
    isatty = getattr(stream, "isatty", None)
    return bool(os.environ.get("NO_COLOR")) or isatty is None or not isatty()


@contextlib.contextmanager
def plain_console_output(stream: Any = None) -> Iterator[None]:
    """A log file gets lines, not terminal frames. Ultralytics' progress bars redraw themselves in place
    (``\\r`` and an ANSI erase per frame) unless GITHUB_ACTIONS is set, and its log lines carry
    ``colorstr`` colour codes; written into a log file (SLURM's, nohup's, a CI's) that is every frame of
    every bar and escape codes in the text. When `stream` (default stdout) is not a terminal, or
    NO_COLOR is set, for the duration: Ultralytics' own non-interactive bar mode is on (each bar writes
    its final line only) and the ``ultralytics`` logger's handlers drop colour codes."""
    import sys

    from ultralytics.utils import LOGGING_NAME, remove_colorstr
    from ultralytics.utils import tqdm as ul_tqdm

    if not _wants_plain(sys.stdout if stream is None else stream):
        yield
        return
    handlers = list(logging.getLogger(LOGGING_NAME).handlers)
    real = ul_tqdm.is_noninteractive_console
    bar_desc = vars(ul_tqdm.TQDM).get("desc", _NONE)

    def strip(record: logging.LogRecord) -> bool:  # a log line ("Results saved to ESC[1m...") without colours
        message = record.getMessage()
        if "\x1b[" in message:
            record.msg, record.args = remove_colorstr(message), ()
        return True

    def set_desc(bar: Any, value: Any) -> None:  # every bar description ("train: Scanning ...") without colours,
        bar.__dict__["desc"] = remove_colorstr(value) if isinstance(value, str) else value  # set in __init__ or later

    ul_tqdm.is_noninteractive_console = lambda: True
    ul_tqdm.TQDM.desc = property(lambda bar: bar.__dict__.get("desc", ""), set_desc)  # bars made before: untouched
    for h in handlers:
        h.addFilter(strip)
    try:
        yield
    finally:
        ul_tqdm.is_noninteractive_console = real
        del ul_tqdm.TQDM.desc  # bars keep their plain description as an ordinary attribute
        if bar_desc is not _NONE:
            ul_tqdm.TQDM.desc = bar_desc
        for h in handlers:
            h.removeFilter(strip)
