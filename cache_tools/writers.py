"""Container writers used by `pack`: payloads in, a resumable journal of what was written out.

Both writers append payloads in source order and keep a journal (one JOURNAL_DTYPE row per source
sample, written after its payload) so a killed pack can resume exactly where it stopped. A full
filesystem surfaces as `CapacityError` from a failed write (ENOSPC), never as SIGBUS: nothing is
written through a memory map. Shard files are preallocated (fallocate), so a tmpfs that cannot
hold the next shard says so before any of it is used.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np

from cache_tools.format import STORE_ID_KEY, shard_name, shard_trailer
from sainet.core.errors import CapacityError, StoreCorruptError, StoreWriteError

__all__ = ["JOURNAL_DTYPE", "ShardWriter", "LmdbWriter", "open_writer", "stamp_store"]

#: One row per processed source sample. status 0 = packed, 1 = left out (bad image).
JOURNAL_DTYPE = np.dtype(
    [
        ("src", "<u8"), ("status", "<u1"), ("flags", "<u2"), ("shard", "<u4"), ("offset", "<u8"), ("length", "<u8"),
        ("crc", "<u4"), ("orig_w", "<u4"), ("orig_h", "<u4"), ("new_w", "<u4"), ("new_h", "<u4"),
    ]
)


def _full(e: OSError, what: str) -> CapacityError:
    return CapacityError(f"{what}: filesystem full ({e.strerror})")


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _write_error(e: OSError, what: str) -> CapacityError | StoreWriteError:
    """A failed write as a typed error: a full filesystem, or any other I/O failure."""
    if e.errno in _FULL:
        return _full(e, what)
    return StoreWriteError(f"{what}: write failed ({e.strerror or e}); the unfinished pack never looks like a store")


def _write_all(fd: int, data: memoryview | bytes, offset: int, what: str) -> None:
    view = memoryview(data)
    try:
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    except OSError as e:
        raise _write_error(e, what) from None


def _lmdb_error(e: Exception, folder: Path, need: int) -> CapacityError | StoreWriteError:
    """LMDB reports a full filesystem as EIO ("Input/output error"): tell them apart by the free space left."""
    try:
        st = os.statvfs(folder)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = -1
    if 0 <= free < need + (1 << 20):
        return CapacityError(f"{folder}: filesystem full ({free} bytes free; LMDB said: {e})")
    return StoreWriteError(f"{folder}: LMDB write failed: {e}; the unfinished pack never looks like a store")


class ShardWriter:
    """Fixed-size shard files (records never span shards) plus ``journal.bin``."""

    container = "shards"

    def __init__(self, folder: Path, shard_size: int, expected_bytes: int) -> None:
        self.folder = folder
        self.shard_size = int(shard_size)
        self.remaining = int(expected_bytes)  # planned payload bytes not yet written: caps preallocation
        self.journal_path = folder / "journal.bin"
        self.shard, self.pos, self._fd = 0, 0, -1
        self._journal_fd = os.open(self.journal_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)

    def done(self) -> np.ndarray:
        """Journal rows already written (a torn last row from a kill is cut off)."""
        raw = self.journal_path.read_bytes()
        whole = len(raw) - len(raw) % JOURNAL_DTYPE.itemsize
        if whole != len(raw):
            os.truncate(self.journal_path, whole)
        rows = np.frombuffer(raw[:whole], JOURNAL_DTYPE).copy()
        ok = rows[rows["status"] == 0]
        if len(ok):
            last = ok[-1]
            self.shard, self.pos = int(last["shard"]), int(last["offset"] + last["length"])
            self.remaining -= int(ok["length"].sum())
        return rows

    def _open(self, i: int, keep: bool) -> None:
        """Open shard `i` (after closing the current one, trimmed to what it holds)."""
        if self._fd >= 0:
            os.ftruncate(self._fd, self.pos)
            os.close(self._fd)
            self._fd = -1
        self.shard, self.pos = i, (self.pos if keep else 0)
        path = self.folder / shard_name(i)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | (0 if keep else os.O_TRUNC), 0o644)
        try:
            reserve = min(self.shard_size, self.pos + max(self.remaining, 0))
            if reserve > 0:
                os.posix_fallocate(self._fd, 0, reserve)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # filesystems without fallocate
                raise _write_error(e, str(path)) from None

    def write(self, row: np.void, payload: memoryview | bytes | None) -> None:
        if payload is not None:
            n = len(payload)
            if self._fd < 0:
                self._open(self.shard, keep=True)
            elif self.pos > 0 and self.pos + n > self.shard_size:
                self._open(self.shard + 1, keep=False)
            _write_all(self._fd, payload, self.pos, str(self.folder / shard_name(self.shard)))
            row["shard"], row["offset"], row["length"] = self.shard, self.pos, n
            self.pos += n
            self.remaining -= n
        try:
            os.write(self._journal_fd, row.tobytes())
        except OSError as e:
            raise _write_error(e, str(self.journal_path)) from None

    def finish(self) -> list[int]:
        """Trim the last shard, flush everything, drop the journal; return the shard sizes."""
        try:
            return self._finish()
        except OSError as e:
            raise _write_error(e, str(self.folder)) from None

    def _finish(self) -> list[int]:
        if self._fd < 0 and self.pos == 0 and not (self.folder / shard_name(0)).exists():
            sizes: list[int] = []
        else:
            if self._fd < 0:
                self._fd = os.open(self.folder / shard_name(self.shard), os.O_RDWR)
            os.ftruncate(self._fd, self.pos)
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            sizes = [os.path.getsize(self.folder / shard_name(i)) for i in range(self.shard + 1)]
        os.close(self._journal_fd)
        self.journal_path.unlink()
        return sizes

    def abort(self) -> None:
        for fd in (self._fd, self._journal_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._journal_fd = -1


class LmdbWriter:
    """One LMDB environment: payloads in the main DB (key = source ordinal, u64 big-endian) and
    the journal in a named DB, committed in the same transaction as the payloads it describes."""

    container = "lmdb"
    _BATCH = 32

    def __init__(self, folder: Path, map_size: int) -> None:
        import lmdb

        self._lmdb = lmdb
        self.folder = folder
        try:
            self.env = lmdb.open(str(folder), map_size=int(map_size), subdir=True, max_dbs=2, sync=False,
                                 metasync=False, writemap=False, map_async=False, meminit=False, readahead=False)
        except lmdb.Error as e:
            err = _lmdb_error(e, folder, 0)
            if isinstance(err, CapacityError):
                raise err from None
            raise StoreCorruptError(f"{folder}: cannot open the partial LMDB: {e}") from None
        self.journal = self.env.open_db(b"journal")
        self._pending: list[tuple[np.void, bytes | memoryview | None]] = []

    def done(self) -> np.ndarray:
        with self.env.begin(db=self.journal) as txn:
            rows = [bytes(v) for _, v in txn.cursor()]
        return np.frombuffer(b"".join(rows), JOURNAL_DTYPE).copy() if rows else np.zeros(0, JOURNAL_DTYPE)

    def write(self, row: np.void, payload: memoryview | bytes | None) -> None:
        if payload is not None:
            row["shard"], row["offset"], row["length"] = 0, row["src"], len(payload)
        self._pending.append((row.copy(), payload))
        if len(self._pending) >= self._BATCH:
            self._commit()

    def _commit(self) -> None:
        lmdb = self._lmdb
        if not self._pending:
            return
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for row, payload in self._pending:
                        key = int(row["src"]).to_bytes(8, "big")
                        if payload is not None:
                            txn.put(key, payload, append=False)
                        txn.put(key, row.tobytes(), db=self.journal)
                break
            except lmdb.MapFullError:
                self.env.set_mapsize(int(self.env.info()["map_size"] * 1.5))
            except lmdb.Error as e:
                raise _lmdb_error(e, self.folder, sum(len(p) for _, p in self._pending if p is not None)) from None
        self._pending.clear()

    def finish(self) -> list[int]:
        self._commit()
        try:
            with self.env.begin(write=True) as txn:
                txn.drop(self.journal, delete=True)
            self.env.sync(True)
        except self._lmdb.Error as e:
            raise _lmdb_error(e, self.folder, 0) from None
        self.env.close()
        return []

    def abort(self) -> None:
        try:
            self.env.close()
        except Exception:  # noqa: BLE001 - best effort on the way out of an error
            pass


def open_writer(container: str, folder: Path, *, shard_size: int, map_size: int, expected_bytes: int) -> ShardWriter | LmdbWriter:
    if container == "shards":
        return ShardWriter(folder, shard_size, expected_bytes)
    return LmdbWriter(folder, map_size)


def stamp_store(folder: Path, container: str, shard_sizes: list[int], store_id: str) -> None:
    """Write `store_id` into the container files (after `finish`): a trailer after each shard's
    payloads, or a key in the LMDB main DB. Readers compare it with the index's (cache_tools.format)."""
    if container == "shards":
        for i, size in enumerate(shard_sizes):
            path = folder / shard_name(i)
            try:
                fd = os.open(path, os.O_RDWR)
                try:
                    _write_all(fd, shard_trailer(store_id, i), size, str(path))
                    os.ftruncate(fd, size + len(shard_trailer(store_id, i)))
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                raise _write_error(e, str(path)) from None
        return
    import lmdb

    try:
        room = os.path.getsize(folder / "data.mdb") + (16 << 20)  # one more key: never a MapFullError
        env = lmdb.open(str(folder), map_size=room, subdir=True, max_dbs=2, meminit=False, readahead=False)
        try:
            with env.begin(write=True) as txn:
                txn.put(STORE_ID_KEY, bytes.fromhex(store_id))
            env.sync(True)
        finally:
            env.close()
    except (lmdb.Error, OSError) as e:
        raise _lmdb_error(e, folder, 64) from None
