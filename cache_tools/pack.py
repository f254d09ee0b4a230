"""`sainet pack`: one or more source datasets -> a store (LMDB or shards; jpeg or raw payloads).

Order of work, in two streaming passes so memory stays bounded whatever the dataset size:
pass 1 reads every annotation (pixels are read and let go at once; hashed for ``drop_leaks``),
plans the bytes and refuses what does not fit; pass 2 reads the sources again in the same order and
decodes every image once in a bounded window of threads (corrupt ones are reported and left out),
writes payloads in source order under ``.NAME.partial``, journals each record, writes the index
last and renames the folder into place. A crash leaves only the partial folder, which never looks like a store (it has
no index); ``resume=True`` continues it, otherwise it is cleared and the pack restarts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    new_store_id,
    payload_checksum,
)
from cache_tools.plan import StoreEstimate, check_fits, estimate_store, fs_info, human_bytes
from cache_tools.target import guard_target, old_path, partial_path, refuse_empty
from cache_tools.writers import JOURNAL_DTYPE, open_writer, stamp_store
from sainet.core import __version__
from sainet.core.check import content_digest, find_duplicates
from sainet.core.datasets import Problem, Sample
from sainet.core.datasets.combine import SourceSet
from sainet.core.errors import DatasetError, ImageError, SainetError
from sainet.core.fsio import fsync_path, write_text
from sainet.core.geometry import letterbox, letterbox_params
from sainet.core.imaging import decode_rgb, encode_jpeg, probe
from sainet.core.parallel import default_threads, ordered_map

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
    classes: list[str] | None = None  # keep (and order) these class names only
    drop_leaks: bool = False  # leave out train images whose bytes also appear in val/test
    class_ids: dict[int, str] | None = None  # the source's own class id -> name (pyrosdis)
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
    boxes: dict = field(default_factory=dict)  # meta["boxes"]: read/kept/clipped/dropped/.../stored/lost
    dropped_leaks: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Entry:
    """A sample's annotation without its pixels: what pass 1 keeps of every image."""

    name: str
    key: str
    split: str
    cls: np.ndarray
    boxes: np.ndarray
    size: int

    def nbytes(self) -> int:
        return self.size


@dataclass
class _Item:
    src: int
    ok: bool
    payload: bytes | memoryview | None = None
    orig: tuple[int, int] = (0, 0)
    new: tuple[int, int] = (0, 0)
    flags: int = 0
    reason: str = ""


def _fingerprint(entries: list[_Entry], opts: PackOptions, container: str, sources: SourceSet) -> dict:
    h = hashlib.blake2b(digest_size=16)
    for s in entries:
        h.update(f"{s.split}\0{s.key}\0".encode())
    return {
        "source": sources.source, "samples": len(entries), "keys": h.hexdigest(), "container": container,
        "mode": opts.mode, "imgsz": list(opts.imgsz) if opts.imgsz else None, "max_size": opts.max_size,
        "shard_size": opts.shard_size, "format_version": 1, "classes": sources.names, "drop_leaks": opts.drop_leaks,
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
    if info.format not in _STORED_AS_IS:  # a jpeg store holds JPEG/PNG; TIFF (16-bit RS), WebP, BMP become JPEG
        return _Item(src, True, encode_jpeg(img, opts.jpeg_quality), (w0, h0), (w0, h0), FLAG_REENCODED)
    return _Item(src, True, data, (w0, h0), (w0, h0))


_STORED_AS_IS = ("jpeg", "png")


def plan_pack(samples: Iterable[Sample | _Entry], imgsz: tuple[int, int] | None) -> StoreEstimate:
    """The store's size for `samples` (one pass: an iterator is fine, nothing is kept)."""
    images = boxes = payload = name_bytes = 0
    for s in samples:
        images += 1
        boxes += len(s.cls)
        payload += s.nbytes()
        name_bytes += len(s.name.encode()) + len(s.key.encode())
    return estimate_store(images=images, boxes=boxes, jpeg_payload=payload, name_bytes=name_bytes, raw_shape=imgsz)


def _scan(sources: SourceSet, drop_leaks: bool) -> tuple[list[_Entry], list[bool], list[dict]]:
    """Pass 1: every sample's annotation (pixels are read and let go at once; hashed for --drop-leaks).

    Returns (entries, kept flag per entry, the leaks left out of train).
    """
    entries: list[_Entry] = []
    members: dict[bytes, list[tuple[str, str, str]]] = {}
    for s in sources.samples():
        if drop_leaks:
            try:
                members.setdefault(content_digest(s.read()), []).append((s.split, s.name, s.key))
            except SainetError:
                pass  # unreadable: pass 2 reports it as left out
        entries.append(_Entry(s.name, s.key, s.split, s.cls, s.boxes, s.nbytes()))
    keep = [True] * len(entries)
    dropped: list[dict] = []
    if drop_leaks:
        leaked = dict(find_duplicates(members).leaked_train)
        for i, e in enumerate(entries):
            if e.key in leaked:
                keep[i] = False
                dropped.append({"key": e.key, "name": e.name, "same_as": leaked[e.key], "boxes": len(e.cls)})
    return entries, keep, dropped


def _payload_samples(sources: SourceSet, entries: list[_Entry], keep: list[bool], done: set[int]) -> Iterator[tuple[int, Sample]]:
    """Pass 2: the kept samples again, with pixels, numbered as in the store; checked against pass 1."""
    it = sources.reopen().samples()
    k = -1
    for e, kept in zip(entries, keep, strict=True):
        s = next(it, None)
        if s is None or s.key != e.key:
            raise DatasetError(f"{e.key}: the source changed while it was being packed (expected it in order)")
        if not kept:
            continue
        k += 1
        if k not in done:
            yield k, s


def _box_counts(sources: SourceSet, kept: list[_Entry], rows: np.ndarray, dropped_leaks: list[dict]) -> dict:
    """Where every box read went; `lost` must be 0 (kept = filtered + in left-out images + stored)."""
    counts = sources.tally.as_dict()
    bad_src = rows["src"][rows["status"] != 0]
    counts["filtered_by_class"] = dict(sources.filtered)
    counts["in_dropped_leaks"] = sum(d["boxes"] for d in dropped_leaks)
    counts["in_left_out_images"] = int(sum(len(kept[int(i)].cls) for i in bad_src))
    counts["stored"] = int(sum(len(e.cls) for e in kept)) - counts["in_left_out_images"]
    counts["lost"] = counts["read"] - counts["dropped_total"] - sum(counts["filtered_by_class"].values()) \
        - counts["in_dropped_leaks"] - counts["in_left_out_images"] - counts["stored"]
    return counts


def _build_index(rows: np.ndarray, samples: list[_Entry], names: list[str], splits: list[str], opts: PackOptions,
                 container: str, shard_sizes: list[int], bad: list[dict], src: str, layout: str) -> IndexData:
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
        "classes": names, "splits": splits, "counts": counts, "source": src, "layout": layout,
        "mode": opts.mode, "container": container, "imgsz": list(opts.imgsz) if opts.imgsz else None,
        "max_size": opts.max_size, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sainet_version": __version__,
        "shards": [{"name": f"shard-{i:05d}.bin", "bytes": n} for i, n in enumerate(shard_sizes)], "bad": bad,
        "reencoded": int((records["flags"] & FLAG_REENCODED != 0).sum()),
    }
    return IndexData(container, opts.mode, opts.imgsz if opts.mode == "raw" else None, records, boxes, bytes(strings),
                     meta, num_shards=len(shard_sizes))



def _check_options(opts: PackOptions, to: Path) -> str:
    """The container to write; ValueError for options that contradict each other."""
    if opts.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if opts.mode == "raw" and not opts.imgsz:
        raise ValueError("raw mode needs imgsz (the training shape)")
    container = opts.container or default_container(to)
    if container not in CONTAINERS:
        raise ValueError(f"container must be one of {CONTAINERS}")
    return container


def _check_room(est: StoreEstimate, opts: PackOptions, container: str, to: Path, partial: Path) -> None:
    partial_bytes = sum(p.stat().st_size for p in partial.rglob("*") if p.is_file()) if (opts.resume and partial.exists()) else 0
    fs = fs_info(to.parent, free=opts.free_bytes, mem_available=opts.mem_available)
    fs_room = type(fs)(**{**fs.__dict__, "free": fs.free + partial_bytes}) if partial_bytes else fs
    check_fits(est, opts.mode, container, fs_room)


def _prepare_partial(partial: Path, fingerprint: dict, opts: PackOptions) -> None:
    """Keep the unfinished pack in `partial` when resuming the same work; else start it afresh."""
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
        write_text(partial / "pack.json", json.dumps(fingerprint))


def _write_payloads(writer: object, work: Iterator[tuple[int, Sample]], kept: list[_Entry], opts: PackOptions,
                    bad_path: Path, progress: Callable[[int], None] | None) -> tuple[list[np.ndarray], list[dict]]:
    """Decode and write every sample of `work` in order (a bounded window in flight); journal rows, left-outs."""
    threads = opts.threads or default_threads()
    known_bad = {json.loads(ln)["src"] for ln in bad_path.read_text().splitlines()} if bad_path.exists() else set()
    new_rows, bad = [], []
    with ThreadPoolExecutor(threads) as pool, open(bad_path, "a") as bad_log:
        for item in ordered_map(pool, lambda t: _process(t[0], t[1], opts), work, depth=4 * threads):
            row = np.zeros((), JOURNAL_DTYPE)
            row["src"], row["status"], row["flags"] = item.src, 0 if item.ok else 1, item.flags
            row["orig_w"], row["orig_h"] = item.orig
            row["new_w"], row["new_h"] = item.new
            if item.ok:
                row["crc"] = payload_checksum(item.payload)
                writer.write(row, item.payload)
            else:
                entry = {"src": item.src, "key": kept[item.src].key, "reason": item.reason}
                if item.src not in known_bad:
                    bad_log.write(json.dumps(entry) + "\n")
                    bad_log.flush()
                bad.append(entry)
                log.warning("left out %s: %s", entry["key"], entry["reason"])
                writer.write(row, None)
            new_rows.append(row.copy())
            if progress:
                progress(1)
    return new_rows, bad


def _commit(partial: Path, to: Path, index: IndexData) -> None:
    """Write the index last, then swap the complete store into place (an old one is removed after)."""
    blob = encode_index(index)
    tmp = partial / (INDEX_NAME + ".tmp")
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    for extra in ("pack.json", "bad.jsonl"):
        (partial / extra).unlink(missing_ok=True)
    os.replace(tmp, partial / INDEX_NAME)
    fsync_path(partial)
    if to.exists():  # --force: swap the complete new store in, then remove the old one
        trash = old_path(to)
        if trash.exists():
            shutil.rmtree(trash)
        os.rename(to, trash)
        os.rename(partial, to)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(partial, to)
    fsync_path(to.parent)


def _source_meta(sources: SourceSet, kept: list[_Entry], rows: np.ndarray, dropped_leaks: list[dict]) -> dict:
    """Metadata about the sources beyond the records: ``sources`` (paths), ``notes`` (e.g. 1-based ids),
    ``class_map`` (per source: name -> store id or None), ``boxes`` (where every box read went, `lost`
    0), ``dropped_leaks`` ({key, name, same_as, boxes} of train images left out by --drop-leaks)."""
    return {
        "sources": [str(p.resolve()) for p in sources.paths], "notes": sources.notes,
        "class_map": sources.class_map(), "boxes": _box_counts(sources, kept, rows, dropped_leaks),
        "dropped_leaks": dropped_leaks,
    }


def pack(src: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], to: str | os.PathLike[str],
         opts: PackOptions | None = None, progress: Callable[[int], None] | None = None,
         on_start: Callable[[int, int], None] | None = None) -> PackReport:
    """Pack one source (or several, classes unified by name) into a store at `to`. See the module docstring,
    and `cache_tools.target` for what `to` may be (never a source; --force replaces only a store; one pack at a time).

    `on_start(total, already_done)` is called once the work is known (for a progress bar).
    """
    opts = opts or PackOptions()
    srcs = [src] if isinstance(src, (str, os.PathLike)) else list(src)
    with guard_target(srcs, to, force=opts.force, wait=opts.lock_wait):
        return _pack(srcs, to, opts, progress, on_start)


def _pack(src: Sequence[str | os.PathLike[str]], to: str | os.PathLike[str], opts: PackOptions,
          progress: Callable[[int], None] | None, on_start: Callable[[int, int], None] | None) -> PackReport:
    t0, to = time.perf_counter(), Path(to)
    container = _check_options(opts, to)
    sources = SourceSet(list(src), opts.layout, opts.class_ids, opts.classes)  # the target: checked by guard_target
    entries, keep, dropped_leaks = _scan(sources, opts.drop_leaks)
    kept = [e for e, k in zip(entries, keep, strict=True) if k]
    splits = list(dict.fromkeys(e.split for e in kept)) or sources.importers[0].splits()
    est = plan_pack(kept, opts.imgsz if opts.mode == "raw" else None)
    partial = partial_path(to)
    _check_room(est, opts, container, to, partial)
    log.info("packing %d images from %s (%s) into %s %s at %s; planned %s", len(kept), sources.source, sources.layout,
             container, opts.mode, to, human_bytes(est.total(opts.mode, container)))
    to.parent.mkdir(parents=True, exist_ok=True)
    _prepare_partial(partial, _fingerprint(kept, opts, container, sources), opts)
    writer = open_writer(container, partial, shard_size=opts.shard_size, expected_bytes=est.payload(opts.mode),
                         map_size=int(est.total(opts.mode, container) * 1.25) + (64 << 20))
    bad_path = partial / "bad.jsonl"
    try:
        done_rows = writer.done()
        done = set(int(s) for s in done_rows["src"])
        prior_bad = [json.loads(ln) for ln in bad_path.read_text().splitlines()] if bad_path.exists() else []
        if on_start:
            on_start(len(kept), len(done))
        work = _payload_samples(sources, entries, keep, done)
        new_rows, bad = _write_payloads(writer, work, kept, opts, bad_path, progress)
        bad = [b for b in prior_bad if b["src"] in done] + bad  # a reason written just before a kill has no row
        shard_sizes = writer.finish()
        rows = np.concatenate([done_rows, np.array(new_rows, JOURNAL_DTYPE)]) if new_rows else done_rows
        index = _build_index(rows, kept, list(sources.names), splits, opts, container, shard_sizes,
                             [{"key": b["key"], "reason": b["reason"]} for b in sorted(bad, key=lambda b: b["src"])],
                             sources.source, sources.layout)
        index.meta.update(_source_meta(sources, kept, rows, dropped_leaks))
        store_id = new_store_id(index)
        stamp_store(partial, container, shard_sizes, store_id)
        index.meta["store_id"] = store_id  # ties shards / data.mdb to this index (see cache_tools.format)
        if container == "lmdb":  # so a truncated data.mdb is refused before LMDB maps it (SIGBUS otherwise)
            index.meta["lmdb_bytes"] = os.path.getsize(partial / "data.mdb")
    except BaseException:
        writer.abort()
        raise
    refuse_empty(len(index.records), len(bad), partial, to)
    _commit(partial, to, index)
    return _report(to, container, opts, index, sources, len(done), time.perf_counter() - t0, est)


def _report(to: Path, container: str, opts: PackOptions, index: IndexData, sources: SourceSet, resumed: int,
            seconds: float, est: StoreEstimate) -> PackReport:
    report = PackReport(
        store=to, container=container, mode=opts.mode, records=len(index.records), bad=index.meta["bad"],
        problems=sources.problems, reencoded=index.meta["reencoded"], resumed=resumed,
        payload_bytes=int(index.records["length"].sum()) if len(index.records) else 0,
        store_bytes=sum(p.stat().st_size for p in to.iterdir() if p.is_file() and p.name != "lock.mdb"),
        seconds=seconds, estimate=est, boxes=index.meta["boxes"], dropped_leaks=index.meta["dropped_leaks"],
        notes=index.meta["notes"],
    )
    return report
