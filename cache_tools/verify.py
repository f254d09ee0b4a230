"""`sainet verify` and `sainet inspect`: check every record of a store, or describe it."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cache_tools.format import payload_checksum
from cache_tools.store import Store, _lmdb_env, open_store, shard_problems
from sainet.core.errors import ImageError, StoreCorruptError, StoreError
from sainet.core.imaging import probe

__all__ = ["VerifyReport", "verify_store", "describe_store"]


@dataclass
class VerifyReport:
    store: str
    checked: int = 0
    bad: list[dict] = field(default_factory=list)  # {"record", "name", "reason"}

    @property
    def ok(self) -> bool:
        return not self.bad

    def as_dict(self) -> dict:
        return {"store": self.store, "checked": self.checked, "ok": self.ok, "bad": self.bad}


def _check_one(store: Store, i: int) -> str | None:
    try:
        buf = store.payload(i)
    except StoreError as e:
        return str(e)
    rec = store.index.records[i]
    if payload_checksum(buf) != int(rec["crc"]):
        return "payload checksum mismatch"
    if store.mode == "jpeg":  # a header parse, no decode: a raw frame or garbage relabelled as an image is caught
        try:
            probe(buf, store.index.name(i))
        except ImageError as e:
            return f"payload is not an image: {e.reason}"
    return None


def verify_store(path: str | Path, *, threads: int = 2, progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Check the index (opening it does), every shard's size and every payload's CRC.

    Index damage raises (`StoreFormatError`/`StoreCorruptError`); record damage is collected.
    """
    store = open_store(path)  # the whole index is checked for consistency here, before any payload is read
    report = VerifyReport(str(path))
    try:
        for problem in shard_problems(store):
            report.bad.append({"record": -1, "name": problem.split(":")[0], "reason": problem})
        if store.container == "lmdb":
            try:
                entries = _lmdb_env(store.path).stat()["entries"]
            except Exception as e:  # noqa: BLE001 - lmdb.Error and its subclasses (a damaged data.mdb)
                raise StoreCorruptError(f"{store.path}: LMDB cannot be read: {e}") from None
            entries -= 1 if store.meta.get("store_id") else 0  # the store id's key (cache_tools.format.STORE_ID_KEY)
            if entries != len(store):
                report.bad.append({"record": -1, "name": "", "reason": f"LMDB holds {entries} payloads, index lists {len(store)}"})
        with ThreadPoolExecutor(threads) as pool:
            for i, reason in enumerate(pool.map(lambda i: _check_one(store, i), range(len(store)))):
                report.checked += 1
                if reason:
                    report.bad.append({"record": i, "name": store.index.name(i), "reason": reason})
                if progress:
                    progress(1)
    finally:
        store.close()
    return report


def describe_store(path: str | Path) -> dict:
    with open_store(path) as s:
        ix = s.index
        boxes_per_class = np.bincount(ix.boxes["cls"].astype(np.int64), minlength=len(s.classes)) if len(ix.boxes) else np.zeros(len(s.classes), int)
        return {
            "path": str(s.path), "format_version": ix.version, "container": s.container, "mode": s.mode,
            "imgsz": list(s.imgsz) if s.imgsz else None, "records": len(s), "boxes": len(ix.boxes),
            "classes": s.classes, "boxes_per_class": {c: int(n) for c, n in zip(s.classes, boxes_per_class, strict=True)},
            "splits": {sp: int(len(s.indices(sp))) for sp in s.splits}, "payload_bytes": int(ix.records["length"].sum()),
            "store_bytes": s.nbytes(), "shards": ix.num_shards, "source": s.meta.get("source"), "layout": s.meta.get("layout"),
            "created": s.meta.get("created"), "store_id": s.meta.get("store_id"), "left_out": len(s.meta.get("bad", [])), "reencoded": s.meta.get("reencoded", 0),
        }
