"""Checkpoints that a kill cannot destroy: write beside, fsync, rename; leftovers removed on the next start.

Every checkpoint the trainer writes (``last.pt``, ``best.pt``, ``epochN.pt``, the final stripped
weights, ``mid_epoch.pt``) goes to a hidden temporary file in the same folder (``.last.pt.<pid>.tmp``),
is flushed to disk (fsync), and then renamed over the old one; the folder is fsynced after. A rename
within one file system is atomic, so a kill at any moment leaves either the previous complete file
or the new complete file, and at worst a temporary file, which `remove_leftovers` deletes when the
run starts again. How the trainer routes Ultralytics' own writes here: `sainet.train.hooks`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from sainet.core.fsio import fsync_path, naming

__all__ = ["AtomicPath", "atomic_file", "atomic_save", "atomic_write_bytes", "latest_checkpoint", "remove_leftovers", "MID_EPOCH_NAME"]

log = logging.getLogger(__name__)
MID_EPOCH_NAME = "mid_epoch.pt"  # in the run's weights/ folder
_TMP_SUFFIX = ".tmp"


def _tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")



def atomic_save(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(file)`` on a temporary file beside `path`, fsync it, and rename it to `path`."""
    path = Path(path)
    with naming(path), atomic_file(path) as tmp, open(tmp, "wb") as f:  # a full disk names the checkpoint
        write(f)
    return path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """For writers that take a path: yield a temporary path beside `path`; once the block ends
    without an error it is fsynced and renamed to `path` (on an error it is removed)."""
    path = Path(path)
    tmp = _tmp_for(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_path(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> int:
    atomic_save(path, lambda f: f.write(data))
    return len(data)


class AtomicPath(type(Path())):  # type: ignore[misc] - the concrete Path class of this platform
    """A path whose ``write_bytes`` is `atomic_write_bytes` (paths joined to it keep that).

    Ultralytics' ``save_model`` writes ``self.last``, ``self.best`` and ``self.wdir / "epochN.pt"``
    with ``Path.write_bytes``; making those three attributes AtomicPaths makes the writes atomic
    without changing Ultralytics' code (`sainet.train.hooks.atomic_checkpoints`).
    """

    def write_bytes(self, data: bytes) -> int:  # type: ignore[override]
        return atomic_write_bytes(self, bytes(data))


def remove_leftovers(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete what killed writes left in `folder` (``.NAME.<pid>.tmp``; ``mid_epoch.tmp`` of older sainet)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = [p for p in folder.iterdir() if p.is_file() and ((p.name.startswith(".") and p.name.endswith(_TMP_SUFFIX))
                                                            or p.name == "mid_epoch.tmp")]
    for p in gone:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
        log.info("removed %s, left by an interrupted checkpoint write", p)
    return gone


def _epoch_of(path: Path) -> int | None:
    from ultralytics.nn.tasks import torch_safe_load

    try:
        ckpt, _ = torch_safe_load(str(path))
    except Exception:  # noqa: BLE001 - unreadable: not a candidate (the caller reports the file it was given)
        return None
    epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
    return epoch if isinstance(epoch, int) else None


def latest_checkpoint(given: str | os.PathLike[str]) -> Path:
    """The checkpoint to resume from when the user names ``RUN/weights/last.pt`` (or ``mid_epoch.pt``).

    A mid-epoch checkpoint (periodic or written on preemption) of a later epoch than last.pt is
    newer, so the run continues from it; one of the same or an earlier epoch is stale (last.pt was
    saved after it) and is removed. So one command, ``--resume RUN/weights/last.pt``, resumes a run
    however it stopped, also one preempted before its first epoch ended (no last.pt yet).
    """
    given = Path(given)
    weights = given.parent
    remove_leftovers(weights)
    last, mid = weights / "last.pt", weights / MID_EPOCH_NAME
    if given.name not in ("last.pt", MID_EPOCH_NAME) or not mid.is_file():
        return given
    if not last.is_file():
        return mid
    mid_epoch, last_epoch = _epoch_of(mid), _epoch_of(last)
    if last_epoch is None:  # last.pt unreadable (written in place by an older sainet): the mid-epoch one, if it reads
        return mid if mid_epoch is not None else last
    if mid_epoch is not None and 0 <= last_epoch < mid_epoch:
        return mid
    log.info("%s is not newer than %s: removed", mid, last)
    mid.unlink(missing_ok=True)
    return last
