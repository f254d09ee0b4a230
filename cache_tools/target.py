"""Where `pack` may write, and one pack per target at a time.

Rules (each refusal is a `TargetError` naming the path and why):

- the target is never the source, inside it, or a folder that contains it (symlinks resolved); never
  ``/``, a system folder or a folder inside a sainet store (`sainet.core.safepath.output_dir`);
- an existing target is replaced (``--force``) only when it is a sainet store: a folder whose
  ``index.sai`` starts with the store magic and that holds nothing but store files. Any other
  folder, a file or a symlink is refused: `pack --force` must not delete a user's folder;
- the partial folder ``.NAME.partial`` beside the target is cleared only when it is a pack's own
  (it holds ``pack.json`` or nothing, and only pack files);
- a lock file ``.NAME.lock`` beside the target is `flock`-ed for the whole pack: a second pack of the
  same target refuses (`TargetLocked`) or waits up to ``wait`` seconds. The kernel drops the lock
  when its holder dies, so a ``kill -9`` never leaves a stale lock;
- a pack that ends with a full filesystem on tmpfs removes its partial (it holds RAM); on disk the
  partial stays for ``--resume``;
- a pack that packed nothing leaves no store (and an old store it was to replace stays).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from cache_tools.format import INDEX_NAME, MAGIC
from cache_tools.plan import fs_info
from cache_tools.store import is_store
from sainet.core.errors import CapacityError, StoreError, StoreExistsError, TargetError, TargetLocked
from sainet.core.safepath import is_inside, output_dir, overlaps

__all__ = ["partial_path", "old_path", "lock_path", "is_store_folder", "check_target", "TargetLock", "guard_target", "refuse_empty"]

log = logging.getLogger(__name__)

#: Files a finished store may hold (LMDB's lock.mdb appears when a writer opened it).
_STORE_FILE = re.compile(r"^(index\.sai|data\.mdb|lock\.mdb|shard-\d{5}\.bin)$")
#: Files a pack's partial folder may hold.
_PARTIAL_FILE = re.compile(r"^(index\.sai(\.tmp)?|data\.mdb|lock\.mdb|shard-\d{5}\.bin|pack\.json|bad\.jsonl|journal\.bin)$")


def partial_path(to: Path) -> Path:
    """The folder a pack of `to` writes into before renaming it into place."""
    return to.parent / f".{to.name}.partial"


def old_path(to: Path) -> Path:
    """Where pack moves the store it replaces (--force), then deletes it."""
    return to.parent / f".{to.name}.old"


def lock_path(to: Path) -> Path:
    return to.parent / f".{to.name}.lock"


def _only_files_matching(folder: Path, pattern: re.Pattern[str]) -> str | None:
    """The first entry of `folder` that is not a regular file named like `pattern` (None: all are)."""
    for entry in os.scandir(folder):
        if not pattern.match(entry.name) or not entry.is_file(follow_symlinks=False):
            return entry.name
    return None


def is_store_folder(path: Path) -> bool:
    """A store (`is_store`) that is no link, whose index has the magic, holding nothing but store
    files: what `--force` may replace."""
    index = path / INDEX_NAME
    if path.is_symlink() or not path.is_dir() or index.is_symlink() or not is_store(path):
        return False
    with open(index, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            return False
    return _only_files_matching(path, _STORE_FILE) is None


def _check_replaceable(to: Path, force: bool) -> None:
    if not (to.exists() or to.is_symlink()):
        return
    if not force:
        raise StoreExistsError(f"{to} exists; pass --force to replace it (the old store stays until the new one is complete)")
    if to.is_symlink():
        raise TargetError(f"{to} is a symbolic link; --force replaces only a sainet store folder (pack to its real path)")
    if not to.is_dir():
        raise TargetError(f"{to} is a file, not a sainet store; --force replaces only a sainet store")
    if not is_store(to):
        raise TargetError(f"{to} is not a sainet store (no {INDEX_NAME}); --force replaces only a sainet store, refusing to delete it")
    if not is_store_folder(to):
        odd = _only_files_matching(to, _STORE_FILE)
        why = f"it holds {odd!r}, which no store has" if odd else f"its {INDEX_NAME} is not a sainet index"
        raise TargetError(f"{to} is not a sainet store ({why}); --force replaces only a sainet store, refusing to delete it")


def _check_partial(to: Path) -> None:
    partial = partial_path(to)
    if not (partial.exists() or partial.is_symlink()):
        return
    if partial.is_symlink() or not partial.is_dir():
        raise TargetError(f"{partial} is in the way of the pack and is not a pack's partial folder; move it away")
    odd = _only_files_matching(partial, _PARTIAL_FILE)
    # A pack writes pack.json first and removes it only once its index (.tmp) is written.
    marked = any((partial / n).is_file() for n in ("pack.json", INDEX_NAME, INDEX_NAME + ".tmp"))
    if odd is not None or (any(partial.iterdir()) and not marked):
        raise TargetError(f"{partial} is not a pack's partial folder (it holds {odd or 'no pack.json'!r}); refusing to delete it")


def _check_source(src: Path, to: Path) -> None:
    if overlaps(src, to):
        rel = "is" if os.path.realpath(src) == os.path.realpath(to) else "lies inside" if is_inside(to, src) else "contains"
        raise TargetError(f"the target {to} {rel} the source {src}; pack to a folder outside the dataset")
    if overlaps(src, partial_path(to)):
        raise TargetError(f"the target's partial folder {partial_path(to)} overlaps the source {src}")


def check_target(srcs: Sequence[str | os.PathLike[str]], to: str | os.PathLike[str], *, force: bool) -> None:
    """Refuse a target `pack` must not write: see the module docstring. `srcs`: every source of the pack."""
    to = Path(to)
    for src in srcs:
        _check_source(Path(src), to)
    # Never /, a system folder or inside a store (a store at exactly `to` is replaced with --force, below).
    output_dir(to, "pack target", store_ok=True, error=TargetError)
    _check_replaceable(to, force)
    _check_partial(to)
    old = old_path(to)
    if (old.exists() or old.is_symlink()) and not is_store_folder(old):
        raise TargetError(f"{old} is in the way of the pack and is not a sainet store; move it away")


class TargetLock:
    """An exclusive `flock` on ``.NAME.lock`` beside the target, held for the whole pack.

    The file is removed on release; an acquirer that locked a file someone just removed notices
    (its inode no longer matches the path) and tries again, so two packs never both hold it.
    """

    def __init__(self, to: Path, wait: float = 0.0) -> None:
        self.path, self.to, self.wait, self.fd = lock_path(to), to, max(float(wait), 0.0), -1

    def _holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            return ""
        return f" (pid {pid})" if pid.isdigit() else ""

    def _try(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise TargetError(f"{self.path}: cannot lock the target: {e.strerror}") from None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        mine = os.fstat(fd)
        if st is None or (st.st_ino, st.st_dev) != (mine.st_ino, mine.st_dev):
            os.close(fd)  # the previous holder removed this file after we opened it: try again
            return self._try()
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return True

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline, delay = time.monotonic() + self.wait, 0.05
        while not self._try():
            left = deadline - time.monotonic()
            if left <= 0:
                waited = f" after waiting {self.wait:g}s" if self.wait else ""
                raise TargetLocked(f"{self.to}: another pack is writing this target{self._holder()}{waited}; "
                                   "wait for it to finish (or pass a lock wait)")
            time.sleep(min(delay, left))  # flock has no timeout: back off and retry until the deadline
            delay = min(delay * 2, 1.0)

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # while still locked, so nobody holds a lock on a file we remove
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> TargetLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _after_full(to: Path, e: CapacityError) -> CapacityError:
    """On tmpfs the unfinished pack holds RAM: remove it. On disk keep it for --resume. Say which."""
    partial = partial_path(to)
    try:
        in_memory = fs_info(to.parent).in_memory
    except OSError:
        in_memory = False
    if not (partial.is_dir() and not partial.is_symlink()):
        return e
    if in_memory:
        shutil.rmtree(partial, ignore_errors=True)
        return CapacityError(f"{e}; the unfinished pack was removed to give the tmpfs (RAM) back")
    return CapacityError(f"{e}; the unfinished pack stays in {partial} (never looks like a store): free space and rerun with --resume")


@contextlib.contextmanager
def guard_target(srcs: Sequence[str | os.PathLike[str]], to: str | os.PathLike[str], *, force: bool,
                 wait: float = 0.0) -> Iterator[None]:
    """Check the target, hold its lock for the pack, and clean a full tmpfs up afterwards."""
    to = Path(to)
    check_target(srcs, to, force=force)  # before locking: a refusal creates nothing
    with TargetLock(to, wait):
        check_target(srcs, to, force=force)  # again under the lock: the first pack may have finished meanwhile
        try:
            yield
        except CapacityError as e:
            raise _after_full(to, e) from None


def refuse_empty(records: int, left_out: int, partial: Path, to: Path) -> None:
    """A pack that packed nothing leaves no store: remove the partial, keep any old store, raise."""
    if records:
        return
    if partial.is_dir() and not partial.is_symlink():
        shutil.rmtree(partial, ignore_errors=True)
    kept = " (the existing store was kept)" if to.exists() else ""
    raise StoreError(f"{to}: no image could be packed ({left_out} left out); no store was written{kept}")
