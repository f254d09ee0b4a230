"""`sainet pack`: a source dataset -> a store (LMDB or shards; jpeg or raw payloads).

Order of work: read every annotation (labels only), plan the bytes and refuse what does not fit,
then decode every image once in threads (corrupt ones are reported and left out), write payloads
in source order under ``.NAME.partial``, journal each record, write the index last and rename the
folder into place. A crash leaves only the partial folder, which never looks like a store (it has
no index); ``resume=True`` continues it, otherwise it is cleared and the pack restarts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cache_tools.format import (
    BOX_DTYPE,
    CONTAINERS,
    FLAG_REENCODED,
    INDEX_NAME,
    MODES,
    RECORD_DTYPE,
    IndexData,
    encode_index,
    payload_checksum,
)
from cache_tools.plan import StoreEstimate, check_fits, estimate_store, fs_info, human_bytes
from cache_tools.target import guard_target, partial_path, refuse_empty
from cache_tools.writers import JOURNAL_DTYPE, open_writer
from sainet import __version__
from sainet.datasets import Importer, Problem, Sample, open_dataset
from sainet.errors import ImageError, SainetError
from sainet.geometry import letterbox, letterbox_params
from sainet.imaging import decode_rgb, encode_jpeg, probe
from sainet.parallel import ordered_map

__all__ = ["PackOptions", "PackReport", "pack", "default_container", "plan_pack"]

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1 << 30


def default_container(target: str | os.PathLike[str]) -> str:
    """shards for tmpfs targets (/dev/shm), LMDB elsewhere."""
    return "shards" if fs_info(Path(target).parent).in_memory else "lmdb"


@dataclass
class PackOptions:
    container: str | None = None  # None: default_container(target)
    mode: str = "jpeg"
    imgsz: tuple[int, int] | None = None  # (H, W) of raw frames; required for raw
    max_size: int | None = None  # jpeg: re-encode images whose long side exceeds this
    layout: str | None = None
    threads: int | None = None
    resume: bool = False
    force: bool = False
    shard_size: int = DEFAULT_SHARD_SIZE
    jpeg_quality: int = 95
    free_bytes: int | None = None  # override the measured free space (what-if, tests)
    mem_available: int | None = None
    lock_wait: float = 0.0  # seconds to wait for another pack of the same target (0: refuse at once)


@dataclass
class PackReport:
    store: Path
    container: str
    mode: str
    records: int
    bad: list[dict] = field(default_factory=list)  # {"key", "reason"} of images left out
    problems: list[Problem] = field(default_factory=list)  # annotation problems from the importer
    reencoded: int = 0
    resumed: int = 0
    payload_bytes: int = 0
    store_bytes: int = 0
    seconds: float = 0.0
    estimate: StoreEstimate | None = None


@dataclass
class _Item:
    src: int
    ok: bool
    payload: bytes | memoryview | None = None
    orig: tuple[int, int] = (0, 0)
    new: tuple[int, int] = (0, 0)
    flags: int = 0
    reason: str = ""


def _fingerprint(samples: list[Sample], opts: PackOptions, container: str, src: Path) -> dict:
    h = hashlib.blake2b(digest_size=16)
    for s in samples:
        h.update(f"{s.split}\0{s.key}\0".encode())
    return {
        "source": str(Path(src).resolve()), "samples": len(samples), "keys": h.hexdigest(), "container": container,
        "mode": opts.mode, "imgsz": list(opts.imgsz) if opts.imgsz else None, "max_size": opts.max_size,
        "shard_size": opts.shard_size, "format_version": 1,
    }


def _process(src: int, sample: Sample, opts: PackOptions) -> _Item:
    try:
        data = sample.read()
        info = probe(data, sample.key)
        img = decode_rgb(data, sample.key, info=info)  # every image is decoded once, even in jpeg mode
    except (ImageError, SainetError) as e:
        return _Item(src, False, reason=getattr(e, "reason", str(e)))
    h0, w0 = img.shape[:2]
    if opts.mode == "raw":
        H, W = opts.imgsz
        frame, _ = letterbox(img, H, W)
        return _Item(src, True, memoryview(frame).cast("B"), (w0, h0), (w0, h0))
    if opts.max_size and max(h0, w0) > opts.max_size:
        r = opts.max_size / max(h0, w0)
        small = cv2.resize(img, (max(1, round(w0 * r)), max(1, round(h0 * r))), interpolation=cv2.INTER_AREA)
        return _Item(src, True, encode_jpeg(small, opts.jpeg_quality), (w0, h0), (small.shape[1], small.shape[0]), FLAG_REENCODED)
    return _Item(src, True, data, (w0, h0), (w0, h0))


def plan_pack(ds: Importer, samples: list[Sample], imgsz: tuple[int, int] | None) -> StoreEstimate:
    return estimate_store(
        images=len(samples), boxes=sum(len(s.cls) for s in samples), jpeg_payload=sum(s.nbytes() for s in samples),
        name_bytes=sum(len(s.name.encode()) + len(s.key.encode()) for s in samples), raw_shape=imgsz,
    )


def _build_index(rows: np.ndarray, samples: list[Sample], names: list[str], splits: list[str], opts: PackOptions,
                 container: str, shard_sizes: list[int], bad: list[dict], src: Path, layout: str) -> IndexData:
    ok = np.sort(rows[rows["status"] == 0], order="src")
    records = np.zeros(len(ok), RECORD_DTYPE)
    n_boxes = sum(len(samples[int(r["src"])].cls) for r in ok)
    boxes = np.zeros(n_boxes, BOX_DTYPE)
    strings = bytearray()
    b = 0
    for i, r in enumerate(ok):
        s = samples[int(r["src"])]
        rec = records[i]
        for f in ("shard", "offset", "length", "crc", "flags", "orig_w", "orig_h", "new_w", "new_h"):
            rec[f] = r[f]
        rec["split"] = splits.index(s.split)
        if opts.mode == "raw":
            lb = letterbox_params(int(r["orig_h"]), int(r["orig_w"]), *opts.imgsz)
            rec["ratio"], rec["new_w"], rec["new_h"], rec["pad_left"], rec["pad_top"] = lb.ratio, lb.new_w, lb.new_h, lb.left, lb.top
        else:
            rec["ratio"] = 1.0
        n = len(s.cls)
        rec["box_start"], rec["box_count"] = b, n
        if n:
            boxes["record"][b : b + n] = i
            boxes["cls"][b : b + n] = s.cls
            for j, f in enumerate("xywh"):
                boxes[f][b : b + n] = s.boxes[:, j]
        b += n
        nb, kb = s.name.encode(), s.key.encode()
        rec["name_start"], rec["name_len"] = len(strings), len(nb)
        strings += nb
        rec["key_start"], rec["key_len"] = len(strings), len(kb)
        strings += kb
    counts = {sp: int((records["split"] == k).sum()) for k, sp in enumerate(splits)}
    meta = {
        "classes": names, "splits": splits, "counts": counts, "source": str(Path(src).resolve()), "layout": layout,
        "mode": opts.mode, "container": container, "imgsz": list(opts.imgsz) if opts.imgsz else None,
        "max_size": opts.max_size, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sainet_version": __version__,
        "shards": [{"name": f"shard-{i:05d}.bin", "bytes": n} for i, n in enumerate(shard_sizes)], "bad": bad,
        "reencoded": int((records["flags"] & FLAG_REENCODED != 0).sum()),
    }
    return IndexData(container, opts.mode, opts.imgsz if opts.mode == "raw" else None, records, boxes, bytes(strings),
                     meta, num_shards=len(shard_sizes))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pack(src: str | os.PathLike[str], to: str | os.PathLike[str], opts: PackOptions | None = None,
         progress: Callable[[int], None] | None = None, on_start: Callable[[int, int], None] | None = None) -> PackReport:
    """Pack `src` into a store at `to`. See the module docstring for the guarantees, and
    `cache_tools.target` for what `to` may be (never the source; --force replaces only a store; one pack at a time).

    `on_start(total, already_done)` is called once the work is known (for a progress bar).
    """
    opts = opts or PackOptions()
    with guard_target(src, to, force=opts.force, wait=opts.lock_wait):
        return _pack(src, to, opts, progress, on_start)


def _pack(src: str | os.PathLike[str], to: str | os.PathLike[str], opts: PackOptions,
          progress: Callable[[int], None] | None, on_start: Callable[[int, int], None] | None) -> PackReport:
    t0 = time.perf_counter()
    src, to = Path(src), Path(to)
    if opts.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if opts.mode == "raw" and not opts.imgsz:
        raise ValueError("raw mode needs imgsz (the training shape)")
    container = opts.container or default_container(to)
    if container not in CONTAINERS:
        raise ValueError(f"container must be one of {CONTAINERS}")

    ds = open_dataset(src, opts.layout)
    samples = list(ds.samples())
    splits = list(dict.fromkeys(s.split for s in samples)) or ds.splits()
    est = plan_pack(ds, samples, opts.imgsz if opts.mode == "raw" else None)
    partial = partial_path(to)
    partial_bytes = sum(p.stat().st_size for p in partial.rglob("*") if p.is_file()) if (opts.resume and partial.exists()) else 0
    fs = fs_info(to.parent, free=opts.free_bytes, mem_available=opts.mem_available)
    fs_room = type(fs)(**{**fs.__dict__, "free": fs.free + partial_bytes}) if partial_bytes else fs
    check_fits(est, opts.mode, container, fs_room)
    log.info("packing %d images from %s (%s) into %s %s at %s; planned %s", len(samples), src, ds.layout, container,
             opts.mode, to, human_bytes(est.total(opts.mode, container)))

    fingerprint = _fingerprint(samples, opts, container, src)
    to.parent.mkdir(parents=True, exist_ok=True)
    if partial.exists():
        prior = None
        try:
            prior = json.loads((partial / "pack.json").read_text())
        except (OSError, ValueError):
            pass
        if opts.resume and prior == fingerprint:
            log.info("resuming the unfinished pack in %s", partial)
        else:
            if opts.resume:
                log.warning("the unfinished pack in %s was made with other settings or source; restarting", partial)
            shutil.rmtree(partial)
    if not partial.exists():
        partial.mkdir()
        (partial / "pack.json").write_text(json.dumps(fingerprint))

    writer = open_writer(container, partial, shard_size=opts.shard_size, expected_bytes=est.payload(opts.mode),
                         map_size=int(est.total(opts.mode, container) * 1.25) + (64 << 20))
    bad_path = partial / "bad.jsonl"
    try:
        done_rows = writer.done()
        done = set(int(s) for s in done_rows["src"])
        bad = [json.loads(ln) for ln in bad_path.read_text().splitlines()] if bad_path.exists() else []
        bad_keys = {b["src"] for b in bad}
        bad = [b for b in bad if b["src"] in done]  # a reason written just before a kill, without its row
        todo = ((i, s) for i, s in enumerate(samples) if i not in done)
        if on_start:
            on_start(len(samples), len(done))
        threads = opts.threads or os.cpu_count() or 2
        new_rows = []
        with ThreadPoolExecutor(threads) as pool, open(bad_path, "a") as bad_log:
            for item in ordered_map(pool, lambda t: _process(t[0], t[1], opts), todo, depth=4 * threads):
                row = np.zeros((), JOURNAL_DTYPE)
                row["src"], row["status"], row["flags"] = item.src, 0 if item.ok else 1, item.flags
                row["orig_w"], row["orig_h"] = item.orig
                row["new_w"], row["new_h"] = item.new
                if item.ok:
                    row["crc"] = payload_checksum(item.payload)
                    writer.write(row, item.payload)
                else:
                    entry = {"src": item.src, "key": samples[item.src].key, "reason": item.reason}
                    if item.src not in bad_keys:
                        bad_log.write(json.dumps(entry) + "\n")
                        bad_log.flush()
                    bad.append(entry)
                    log.warning("left out %s: %s", entry["key"], entry["reason"])
                    writer.write(row, None)
                new_rows.append(row.copy())
                if progress:
                    progress(1)
        shard_sizes = writer.finish()
        rows = np.concatenate([done_rows, np.array(new_rows, JOURNAL_DTYPE)]) if new_rows else done_rows
        index = _build_index(rows, samples, list(ds.names), splits, opts, container, shard_sizes,
                             [{"key": b["key"], "reason": b["reason"]} for b in sorted(bad, key=lambda b: b["src"])],
                             src, ds.layout)
        if container == "lmdb":  # so a truncated data.mdb is refused before LMDB maps it (SIGBUS otherwise)
            index.meta["lmdb_bytes"] = os.path.getsize(partial / "data.mdb")
    except BaseException:
        writer.abort()
        raise
    refuse_empty(len(index.records), len(bad), partial, to)
    blob = encode_index(index)
    tmp = partial / (INDEX_NAME + ".tmp")
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    for extra in ("pack.json", "bad.jsonl"):
        (partial / extra).unlink(missing_ok=True)
    os.replace(tmp, partial / INDEX_NAME)
    _fsync_dir(partial)
    if to.exists():  # --force: swap the complete new store in, then remove the old one
        trash = to.parent / f".{to.name}.old"
        if trash.exists():
            shutil.rmtree(trash)
        os.rename(to, trash)
        os.rename(partial, to)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(partial, to)
    _fsync_dir(to.parent)
    report = PackReport(
        store=to, container=container, mode=opts.mode, records=len(index.records), bad=index.meta["bad"],
        problems=list(ds.problems), reencoded=index.meta["reencoded"], resumed=len(done),
        payload_bytes=int(index.records["length"].sum()) if len(index.records) else 0,
        store_bytes=sum(p.stat().st_size for p in to.iterdir() if p.is_file() and p.name != "lock.mdb"),
        seconds=time.perf_counter() - t0, estimate=est,
    )
    return report
