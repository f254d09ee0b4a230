"""Reading a packed store: `open_store(path)` -> `Store`, zero-copy payloads from either container.

A `Store` is cheap to create and safe to hand to other processes: it holds the path and the parsed
index; the mmaps (shards) and the LMDB environment are opened lazily in each process on first use
(never before a fork), read-only and lock-free, so every worker and DDP rank shares one copy of
the data through the page cache.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache_tools.format import (
    INDEX_NAME,
    STORE_ID_KEY,
    TRAILER_SIZE,
    IndexData,
    parse_trailer,
    payload_checksum,
    read_index,
    shard_name,
)
from sainet.core.errors import StoreCorruptError, StoreFormatError, StoreReplacedError
from sainet.core.safepath import is_store

__all__ = ["Record", "Store", "is_store", "open_store", "lmdb_required_bytes", "shard_problems"]


@dataclass(frozen=True, slots=True)
class Record:
    index: int
    name: str
    key: str
    split: str
    orig_size: tuple[int, int]  # (w, h) of the original, displayed frame
    cls: np.ndarray  # (n,) int32
    boxes: np.ndarray  # (n, 4) float32 normalized xywh of the original image
    payload: memoryview  # encoded JPEG bytes, or a raw HxWx3 uint8 frame (zero-copy)
    ratio: float
    new_size: tuple[int, int]  # (w, h) of the scaled image inside a raw frame
    pad: tuple[int, int]  # (left, top) padding of a raw frame


class _ShardPayloads:
    def __init__(self, root: Path, ix: IndexData) -> None:
        self.root = root
        self.sizes = [int(s["bytes"]) for s in ix.meta.get("shards", [])]
        if len(self.sizes) != ix.num_shards:
            raise StoreFormatError(f"{root}: index lists {len(self.sizes)} shard sizes for {ix.num_shards} shards")
        recs = ix.records
        if len(recs) and int(recs["shard"].max()) >= ix.num_shards:
            bad = int(np.flatnonzero(recs["shard"] >= ix.num_shards)[0])
            raise StoreFormatError(f"{root}: record {bad}: field shard names a shard that does not exist")
        if len(recs):
            size = np.asarray(self.sizes, np.uint64)[recs["shard"]]
            # offset + length can wrap around in u8: compare without adding.
            past = (recs["length"] > size) | (recs["offset"] > size - np.minimum(recs["length"], size))
            if past.any():
                bad = int(np.flatnonzero(past)[0])
                raise StoreFormatError(f"{root}/{shard_name(int(recs['shard'][bad]))}: record {bad}: field offset/length ends past the shard's size")
        self.store_id: str | None = ix.meta.get("store_id")
        self._maps: list[mmap.mmap | None] = [None] * ix.num_shards
        self._fds: list[int] = [-1] * ix.num_shards
        self._pid = -1
        self._lock = threading.Lock()

    def _map(self, i: int) -> mmap.mmap:
        if self._pid != os.getpid():  # after a fork: the parent's maps and descriptors are not ours
            self._maps, self._fds, self._pid = [None] * len(self._maps), [-1] * len(self._maps), os.getpid()
        m = self._maps[i]
        if m is None:
            with self._lock:
                m = self._maps[i]
                if m is None:
                    fd, m = self._open(i)
                    self._maps[i], self._fds[i] = m, fd
        return m

    def _open(self, i: int) -> tuple[int, mmap.mmap | None]:
        """Open and map shard `i` after checking it is a regular file of this store, as long as the index says."""
        path = self.root / shard_name(i)
        try:
            # A FIFO would block open() forever: refuse anything but a regular file first,
            # and open non-blocking in case it is swapped between the two calls.
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise StoreCorruptError(f"{path}: shard is not a regular file")
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise StoreCorruptError(f"{path}: cannot open shard: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StoreCorruptError(f"{path}: shard is not a regular file")
            self._check_owner(fd, i, st.st_size, path)
            # A shard shorter than the index says would SIGBUS on access: refuse it here.
            if st.st_size < self.sizes[i]:
                raise StoreCorruptError(f"{path}: shard is {st.st_size} bytes, index expects {self.sizes[i]} (truncated)")
            return fd, (mmap.mmap(fd, self.sizes[i], prot=mmap.PROT_READ) if self.sizes[i] else None)
        except BaseException:
            os.close(fd)
            raise

    def _check_owner(self, fd: int, i: int, size: int, path: Path) -> None:
        """The shard's trailer names this index's store id (stores packed before store ids have none)."""
        if self.store_id is None:
            return
        at = os.pread(fd, TRAILER_SIZE, self.sizes[i]) if size >= self.sizes[i] + TRAILER_SIZE else b""
        if parse_trailer(at) == (self.store_id, i):
            return
        end = parse_trailer(os.pread(fd, TRAILER_SIZE, size - TRAILER_SIZE)) if size >= TRAILER_SIZE else None
        if end is not None and end[0] != self.store_id:
            raise StoreReplacedError(f"{self.root}: store was replaced under this reader: {path.name} belongs to store "
                                     f"{end[0]}, the index read earlier to store {self.store_id}; reopen the store")
        if size < self.sizes[i]:
            raise StoreCorruptError(f"{path}: shard is {size} bytes, index expects {self.sizes[i]} (truncated)")
        raise StoreReplacedError(f"{self.root}: {path.name} does not belong to this index (no trailer with store id "
                                 f"{self.store_id}): the store was replaced or its shard overwritten")

    def get(self, rec: np.void) -> memoryview:
        length = int(rec["length"])
        if length == 0:
            return memoryview(b"")
        off, shard = int(rec["offset"]), int(rec["shard"])
        m = self._map(shard)
        # A file that shrinks under a live map SIGBUSes on access: check its size before every read
        # (one fstat), so a shard truncated by another tool is a typed error, never a signal death.
        try:
            size = os.fstat(self._fds[shard]).st_size
        except OSError as e:
            raise StoreCorruptError(f"{self.root / shard_name(shard)}: cannot stat shard: {e.strerror}") from None
        if size < self.sizes[shard]:
            raise StoreCorruptError(f"{self.root}: {shard_name(shard)} shrank to {size} bytes under this reader "
                                    f"(index expects {self.sizes[shard]}); the store was truncated or replaced")
        return memoryview(m)[off : off + length]

    def close(self) -> None:
        for m in self._maps:
            if m is not None:
                try:
                    m.close()
                except BufferError:  # a caller still holds a view; the map closes when it is dropped
                    pass
        if self._pid == os.getpid():
            for fd in self._fds:
                if fd >= 0:
                    os.close(fd)
        self._maps, self._fds = [None] * len(self._maps), [-1] * len(self._maps)


_LMDB_ENVS: dict[tuple[int, str, int, int, int], object] = {}
_LMDB_LOCK = threading.Lock()


def _lmdb_env(root: Path):  # noqa: ANN202 - lmdb.Environment
    """One read-only environment per (process, path, data.mdb file and its mtime): py-lmdb refuses
    to open files twice in a process. A store packed over the path since (another data.mdb) gets its
    own environment; the old one stays open for the readers of the old index (they keep their
    pixels), unless the new files reuse its inode numbers (`_open_lmdb`)."""
    try:
        st = os.stat(root / "data.mdb")
    except OSError as e:
        raise StoreCorruptError(f"{root / 'data.mdb'}: cannot open LMDB: {e.strerror}") from None
    # the modification time too: a store deleted and packed again may get the old data.mdb's inode number
    key = (os.getpid(), os.path.realpath(root), st.st_dev, st.st_ino, st.st_mtime_ns)
    env = _LMDB_ENVS.get(key)
    if env is None:
        with _LMDB_LOCK:
            env = _LMDB_ENVS.get(key)
            if env is None:
                # A forked child inherits its parent's handle (and py-lmdb's "already open" mark):
                # close the inherited copy here, in the child only, then open our own.
                for stale in [k for k in _LMDB_ENVS if k[1] == key[1] and k[0] != key[0]]:
                    try:
                        _LMDB_ENVS.pop(stale).close()
                    except Exception:  # noqa: BLE001 - the parent's handle is not ours to fail on
                        pass
                env = _open_lmdb(root, key)
                _LMDB_ENVS[key] = env
    return env


def _open_lmdb(root: Path, key: tuple):  # noqa: ANN202 - lmdb.Environment
    """Open `root` read-only. py-lmdb refuses files it still has open by (device, inode): a store
    deleted and packed again at this path can reuse the inode numbers of an environment this process
    still holds for the old, deleted files. Those environments are closed (their readers get an
    error, never these pixels) and the open is tried once more."""
    import lmdb

    def attempt():  # noqa: ANN202
        return lmdb.open(str(root), readonly=True, lock=False, readahead=False, max_readers=1024,
                         subdir=True, meminit=False, max_dbs=2)

    try:
        return attempt()
    except lmdb.Error as e:
        if "already open" not in str(e):
            raise StoreCorruptError(f"{root}: cannot open LMDB: {e}") from None
    for old in [k for k in _LMDB_ENVS if k[:2] == key[:2]]:  # this process, this path: the deleted stores
        with contextlib.suppress(Exception):
            _LMDB_ENVS.pop(old).close()  # type: ignore[attr-defined]
    try:
        return attempt()
    except lmdb.Error as e:
        raise StoreCorruptError(f"{root}: cannot open LMDB: {e}") from None


_LMDB_MAGIC = 0xBEEFC0DE


def lmdb_required_bytes(data: Path) -> int:
    """Bytes an LMDB ``data.mdb`` must have, from its newest meta page: (last page + 1) x page size.

    Meta page layout (LMDB 0.9, 64-bit): a 16-byte page header, then magic (u32) at 16, the page
    size (the free DB's md_pad, u32) at 40, the last used page (u64) at 136 and the txn id at 144.
    A file too short for its meta pages, or without the magic, is refused here.
    """
    with open(data, "rb") as f:
        head = f.read(16 + 144 + 8)
        if len(head) < 152 or int.from_bytes(head[16:20], "little") != _LMDB_MAGIC:
            raise StoreCorruptError(f"{data}: not an LMDB data file (no meta page)")
        psize = int.from_bytes(head[40:44], "little")
        if psize < 512 or psize > 1 << 20 or psize & (psize - 1):
            raise StoreCorruptError(f"{data}: LMDB meta page has page size {psize}")
        f.seek(psize)
        second = f.read(152)
    metas = [head[:152]] + ([second] if len(second) == 152 and int.from_bytes(second[16:20], "little") == _LMDB_MAGIC else [])
    newest = max(metas, key=lambda m: int.from_bytes(m[144:152], "little"))
    return max(2 * psize, (int.from_bytes(newest[136:144], "little") + 1) * psize)


class _LmdbPayloads:
    def __init__(self, root: Path, ix: IndexData) -> None:
        self.root = root
        data = root / "data.mdb"
        if not data.is_file():
            raise StoreFormatError(f"{root}: LMDB store without data.mdb (or not a regular file)")
        # LMDB memory-maps data.mdb: reading past the end of a truncated file is a SIGBUS, so the
        # size recorded at pack time, and the size LMDB's own meta pages need, are checked before
        # the environment is ever opened (an index may lack the first: older or crafted stores).
        size = data.stat().st_size
        expected = max(int(ix.meta.get("lmdb_bytes", 0)), lmdb_required_bytes(data))
        if size < expected:
            raise StoreCorruptError(f"{data}: {size} bytes, the index expects {expected} (truncated)")
        self.store_id: str | None = ix.meta.get("store_id")
        self._pid = -1
        self._local = threading.local()

    def _txn(self):  # noqa: ANN202 - lmdb.Transaction
        if self._pid != os.getpid():  # after a fork: the parent's transactions are not ours
            self._pid, self._local = os.getpid(), threading.local()
        txn = getattr(self._local, "txn", None)
        if txn is None:
            txn = _lmdb_env(self.root).begin(buffers=True)
            self._check_owner(txn)
            self._local.txn = txn
        return txn

    def _check_owner(self, txn) -> None:  # noqa: ANN001 - lmdb.Transaction
        """``data.mdb`` holds this index's store id (stores packed before store ids have none)."""
        if self.store_id is None:
            return
        try:
            found = txn.get(STORE_ID_KEY)
        except Exception as e:  # noqa: BLE001 - lmdb.Error and its subclasses (corrupt pages)
            raise StoreCorruptError(f"{self.root}: LMDB read of the store id failed: {e}") from None
        found = bytes(found).hex() if found is not None else None
        if found != self.store_id:
            raise StoreReplacedError(f"{self.root}: store was replaced under this reader: data.mdb belongs to store "
                                     f"{found or '(none)'}, the index read earlier to store {self.store_id}; reopen the store")

    def _drop_txn(self) -> None:
        """After a failed read LMDB marks the transaction bad (MDB_BAD_TXN): the next read starts a fresh one."""
        txn = getattr(self._local, "txn", None)
        self._local.txn = None
        if txn is not None:
            try:
                txn.abort()
            except Exception:  # noqa: BLE001 - an already failed transaction
                pass

    def get(self, rec: np.void) -> memoryview:
        key = int(rec["offset"]).to_bytes(8, "big")
        try:
            buf = self._txn().get(key)
        except StoreCorruptError:
            raise
        except Exception as e:  # lmdb.Error and its many subclasses (corrupt pages)
            self._drop_txn()
            raise StoreCorruptError(f"{self.root}: LMDB read of key {int(rec['offset'])} failed: {e}") from None
        if buf is None:
            raise StoreCorruptError(f"{self.root}: LMDB has no payload for key {int(rec['offset'])}")
        return memoryview(buf)

    def close(self) -> None:
        """Transactions end with their threads; the shared environment stays open for other readers."""
        self._local = threading.local()


def shard_problems(store: Store) -> list[str]:
    """Each shard file that is missing, not a regular file, or shorter than the index says (no file is opened)."""
    out = []
    sizes = getattr(store._payloads, "sizes", [])
    for i, expected in enumerate(sizes):
        path = store.path / shard_name(i)
        try:
            st = os.stat(path)
        except OSError as e:
            out.append(f"{path.name}: {e.strerror}")
            continue
        if not stat.S_ISREG(st.st_mode):
            out.append(f"{path.name}: not a regular file")
        elif st.st_size < expected:
            out.append(f"{path.name}: {st.st_size} bytes, index expects {expected} (truncated)")
    return out


class Store:
    """A packed store opened for reading. See `open_store`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.index = read_index(self.path)
        ix = self.index
        self.container, self.mode, self.imgsz = ix.container, ix.mode, ix.imgsz
        self.classes: list[str] = [str(c) for c in ix.meta["classes"]]
        self.splits: list[str] = [str(s) for s in ix.meta["splits"]]
        self.meta = ix.meta
        self._payloads = _ShardPayloads(self.path, ix) if ix.container == "shards" else _LmdbPayloads(self.path, ix)

    def __reduce__(self):  # noqa: ANN204 - rebuilt from its path in the other process, never pickled whole
        return (open_store, (str(self.path), self.meta.get("store_id")))

    def __len__(self) -> int:
        return len(self.index.records)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, {self.container}, {self.mode}, {len(self)} records)"

    def indices(self, split: str | None = None) -> np.ndarray:
        """Record indices of `split` (all when None), in store order."""
        if split is None:
            return np.arange(len(self))
        if split not in self.splits:
            raise KeyError(f"{self.path}: no split {split!r} (has {', '.join(self.splits)})")
        return np.nonzero(self.index.records["split"] == self.splits.index(split))[0]

    def payload(self, i: int, *, verify: bool = False) -> memoryview:
        """The payload of record `i`, zero-copy. `verify=True` checks its CRC first."""
        rec = self.index.records[i]
        buf = self._payloads.get(rec)
        if len(buf) != int(rec["length"]):
            raise StoreCorruptError(f"{self.path}: record {i} ({self.index.name(i)}): payload is {len(buf)} bytes, index says {int(rec['length'])}")
        if verify and payload_checksum(buf) != int(rec["crc"]):
            raise StoreCorruptError(f"{self.path}: record {i} ({self.index.name(i)}): payload checksum mismatch")
        return buf

    def labels_of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rec = self.index.records[i]
        b = self.index.boxes[int(rec["box_start"]) : int(rec["box_start"]) + int(rec["box_count"])]
        return b["cls"].astype(np.int32), np.stack([b["x"], b["y"], b["w"], b["h"]], axis=1).astype(np.float32)

    def __getitem__(self, i: int) -> Record:
        if not -len(self) <= i < len(self):
            raise IndexError(f"record {i} out of range for {len(self)} records")
        i = int(i) % len(self)
        rec = self.index.records[i]
        cls, boxes = self.labels_of(i)
        return Record(
            index=i, name=self.index.name(i), key=self.index.key(i), split=self.splits[int(rec["split"])],
            orig_size=(int(rec["orig_w"]), int(rec["orig_h"])), cls=cls, boxes=boxes, payload=self.payload(i),
            ratio=float(rec["ratio"]), new_size=(int(rec["new_w"]), int(rec["new_h"])),
            pad=(int(rec["pad_left"]), int(rec["pad_top"])),
        )

    def labels(self, split: str | None = None) -> list[dict]:
        """Ultralytics-style labels for `split` from the index alone (no image reads).

        Each dict has ``cls`` (n, 1) float32, ``bboxes`` (n, 4) float32 normalized xywh,
        ``bbox_format`` "xywh", ``normalized`` True, ``shape`` (h, w) and ``im_file``.
        """
        out = []
        recs = self.index.records
        for i in self.indices(split):
            cls, boxes = self.labels_of(int(i))
            out.append({
                "im_file": self.index.name(int(i)), "shape": (int(recs[i]["orig_h"]), int(recs[i]["orig_w"])),
                "cls": cls.astype(np.float32).reshape(-1, 1), "bboxes": boxes, "bbox_format": "xywh", "normalized": True,
            })
        return out

    def nbytes(self) -> int:
        """Bytes on disk: the index plus the container files."""
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file() and p.name != "lock.mdb")

    def close(self) -> None:
        self._payloads.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(path: str | os.PathLike[str], expect_id: str | None = None) -> Store:
    """Open a packed store for reading (either container, either payload mode).

    `expect_id`: the store id this reader must find (a store handed to another process is reopened
    there by path; a store packed over it since then is a `StoreReplacedError`, not other pixels).
    """
    p = Path(path)
    if p.is_file() and p.name == INDEX_NAME:
        p = p.parent
    store = Store(p)
    if expect_id is not None and store.meta.get("store_id") != expect_id:
        raise StoreReplacedError(f"{p}: store was replaced: its index is store {store.meta.get('store_id') or '(none)'}, "
                                 f"this reader was opened on store {expect_id}; reopen the store")
    return store
