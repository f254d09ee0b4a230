"""`sainet bench-loader`: every backend on the same data and settings, side by side in one run.

For each backend: warm up, then pull batches for a fixed time or count, recording images/s,
batch latency (p50/p99 of the time the consumer waits for each batch), CPU% of the process tree,
and peak memory as summed PSS of the process tree above the idle baseline (loader worker
processes included, all of which are loader cost). References measured in the same run, with the
same threads:

- decode: the same JPEGs decoded in a tight loop (the ceiling without augmentation);
- work-minimum: decode once plus one resample of every output pixel into the training shape
  (the ceiling for any loader that augments);
  every row also records CPU time per output image (`cpu_ms_per_image`, the process tree's), and
  `cpu_vs_*` ratios compare it: on a busy host that figure is steady where images/s is not;
- raw-copy: raw frames copied out of the store (the ceiling for raw stores);
- ultralytics: its YOLODataset + InfiniteDataLoader on the same images and hyperparameters.

Like for like: every row states its output shape, pixels per batch, decodes per output image and
augment settings. Ultralytics' train loader always yields square batches (max(imgsz)), so a ratio
to it (`vs_ultralytics`) is only computed for rows of the same output shape; other shapes get a
megapixels/s ratio (`mpx_vs_ultralytics`) instead, never an images/s one. With `repeats` > 1 the
backends run round-robin and every figure and ratio is the median over the repeats.

Nothing is written to stdout while the bench runs (Ultralytics' log lines go to stderr) and
nothing into the source folder: Ultralytics reads a private link tree in a temporary folder,
where its labels cache also lands.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import psutil

from cache_tools.format import INDEX_NAME
from cache_tools.store import open_store
from loaders.backends import BACKENDS as LOADER_BACKENDS
from sainet.errors import SainetError
from sainet.geometry import format_imgsz, letterbox_params
from sainet.imaging import decode_rgb
from sainet.settings import BENCH_BACKENDS

__all__ = ["BenchResult", "BenchConfig", "run_bench", "evict", "headline", "stdout_to_stderr", "BACKENDS", "REFERENCES",
           "BENCH_HYP"]

log = logging.getLogger(__name__)
BACKENDS = BENCH_BACKENDS  # every name `run_bench` measures (sainet.settings: light enough for the CLI)
REFERENCES = ("decode", "work-minimum", "raw-copy")
#: The bench's train augmentation on top of Ultralytics' defaults (mosaic 1.0, HSV 0.015/0.7/0.4,
#: fliplr 0.5, translate 0.1, scale 0.5): mixup 0.15, as in the FASDD stage-1 config (issue 14).
BENCH_HYP: dict[str, float] = {"mixup": 0.15}
_PROGRESS = Callable[[str, int | None], Callable[[int], None]]


@dataclass
class BenchResult:
    name: str
    kind: str  # "loader" or "reference"
    images_per_s: float
    batches: int = 0
    images: int = 0
    seconds: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_percent: float | None = None
    pss_mb: float | None = None  # peak summed PSS of the process tree above the idle baseline
    pss_anon_mb: float | None = None  # ... of which anonymous (private heap); the rest is mapped store pages
    ratios: dict[str, float] = field(default_factory=dict)
    note: str = ""
    out_shape: str | None = None  # WxH of each output image; None: the source's own size (decode)
    pixels_per_batch: int | None = None
    decodes_per_image: float | None = None  # JPEG decodes per output image (mosaic/mixup partners included)
    augment: str = ""  # the augmentation settings, in Ultralytics' names
    megapixels_per_s: float | None = None
    repeats: list[float] = field(default_factory=list)  # images/s of each repeat (the figure is their median)
    cpu_ms_per_image: float | None = None  # CPU time of the process tree per output image (robust to a busy host)


@dataclass
class BenchConfig:
    stores: dict[str, Path]  # "shards", "lmdb" (jpeg stores), optionally "raw"
    source: Path | None  # the dataset folder (disk, ultralytics)
    imgsz: tuple[int, int]
    batch: int = 8
    augment: bool = True
    seconds: float | None = 10.0
    batches: int | None = None
    warmup: int = 3
    threads: int = 2
    prefetch: int = 2
    workers: int = 2  # Ultralytics DataLoader workers
    cold: bool = False
    split: str = "train"
    hyp: dict[str, float] = field(default_factory=lambda: dict(BENCH_HYP))  # Ultralytics names, on its defaults
    repeats: int = 1
    scratch: Path | None = None  # where the Ultralytics link tree goes (default: the system temp folder)


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def _rollup(pid: int) -> dict[str, int]:
    """Pss, Pss_Anon, Pss_File, Pss_Shmem of one process, in bytes (Linux smaps_rollup)."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def _pss(proc: psutil.Process, key: str = "Pss") -> int:
    """Summed PSS of the process tree. Pss_Anon is the loader's own (private, heap) memory; the
    store's pages mapped from the page cache or /dev/shm show in Pss_File / Pss_Shmem, shared by
    every process and rank that maps them."""
    return sum(_rollup(p.pid).get(key, 0) for p in _tree(proc))


def _cpu_seconds(proc: psutil.Process) -> float:
    total = 0.0
    for p in _tree(proc):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


class _Sampler:
    """Peak PSS (total and anonymous) of the process tree, sampled in the background.

    Reading smaps_rollup walks the process's page tables: ~23 ms per read for a loader holding
    1440x1440 batches (measured on the 2-core dev box), i.e. ~10% of a core at 4 Hz. So it samples
    every 0.5 s and keeps its own CPU time (`cpu_s`), which the bench subtracts from the backend's."""

    def __init__(self, period: float = 0.5) -> None:
        self.proc = psutil.Process()
        self.period = period
        self.peak = 0
        self.peak_anon = 0
        self.cpu_s = 0.0  # CPU time spent sampling (not the backend's)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        t0 = time.thread_time()
        roll = [_rollup(p.pid) for p in _tree(self.proc)]
        self.peak = max(self.peak, sum(r.get("Pss", 0) for r in roll))
        self.peak_anon = max(self.peak_anon, sum(r.get("Pss_Anon", 0) for r in roll))
        self.cpu_s += time.thread_time() - t0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.period)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def evict(paths: list[Path]) -> int:
    """Drop the page cache of every file under `paths` (posix_fadvise DONTNEED): cold reads."""
    n = 0
    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for f in files:
            try:
                fd = os.open(f, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                n += 1
            finally:
                os.close(fd)
    return n


def _measure(name: str, batches: Iterator[int], cfg: BenchConfig, progress: Callable[[int], None] | None,
             base_pss: int, base_anon: int) -> BenchResult:
    """Pull from `batches` (yielding images per batch): warm-up, then time it. Memory is counted
    from `base_*`, taken before the backend was built (so a RAM cache made at set-up counts)."""
    for _ in range(cfg.warmup):
        if next(batches, None) is None:
            break
    cpu0, t0 = _cpu_seconds(psutil.Process()), time.perf_counter()
    lat, images = [], 0
    with _Sampler() as sampler:
        last = time.perf_counter()
        while True:
            n = next(batches, None)
            now = time.perf_counter()
            if n is None:
                break
            lat.append(now - last)
            last = now
            images += n
            if progress:
                progress(n)
            if cfg.batches is not None and len(lat) >= cfg.batches:
                break
            if cfg.batches is None and now - t0 >= (cfg.seconds or 10.0):
                break
    dt = time.perf_counter() - t0
    cpu_s = max(0.0, _cpu_seconds(psutil.Process()) - cpu0 - sampler.cpu_s)
    ms = np.array(lat) * 1000
    return BenchResult(name, "loader", images / dt if dt else 0.0, len(lat), images, dt,
                       float(np.percentile(ms, 50)) if len(ms) else None, float(np.percentile(ms, 99)) if len(ms) else None,
                       cpu_s / dt * 100 if dt else 0.0, max(0, sampler.peak - base_pss) / 1e6,
                       max(0, sampler.peak_anon - base_anon) / 1e6, cpu_ms_per_image=cpu_s * 1000 / images if images else None)


def _loop(make: Callable[[], Iterator[dict]]) -> Iterator[int]:
    """Endless batches from a loader factory (one epoch after another): images per batch."""
    while True:
        got = False
        for b in make():
            got = True
            yield len(b["im_file"]) if "im_file" in b else int(b["img"].shape[0])
        if not got:
            return


def _sainet_backend(kind: str, cfg: BenchConfig, store: Path | None) -> tuple[Iterator[int], Callable[[], None]]:
    from loaders import build_loader

    data = cfg.source if kind == "disk" else store
    loader = build_loader(data, kind, batch_size=cfg.batch, imgsz=cfg.imgsz, split=cfg.split, augment=cfg.augment,
                          hyp=cfg.hyp, threads=cfg.threads, prefetch=cfg.prefetch, device=None)
    return _loop(lambda: iter(loader)), loader.close


def _ultralytics_backend(cfg: BenchConfig, cache: bool, img_dir: Path) -> tuple[Iterator[int], Callable[[], None]]:
    """Ultralytics' YOLODataset + InfiniteDataLoader over `img_dir` (the private link tree)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_dataloader
    from ultralytics.data.dataset import YOLODataset

    from sainet.datasets import open_dataset

    ds = open_dataset(cfg.source)
    size = max(cfg.imgsz)
    hyp = get_cfg(overrides={"imgsz": size, "cache": "ram" if cache else False, **cfg.hyp})
    if not cfg.augment:
        hyp.mosaic = 0.0
    dataset = YOLODataset(img_path=str(img_dir), imgsz=size, augment=cfg.augment, rect=False, cache="ram" if cache else False,
                          data={"names": dict(enumerate(ds.names)), "channels": 3}, batch_size=cfg.batch, stride=32,
                          single_cls=False, task="detect", hyp=hyp, prefix="")
    loader = build_dataloader(dataset, batch=cfg.batch, workers=cfg.workers, shuffle=True, rank=-1, pin_memory=False, device="cpu")

    def close() -> None:
        it = getattr(loader, "iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    return _loop(lambda: iter(loader)), close


def _yolo_split_dir(source: Path, split: str) -> Path:
    for cand in (source / "images" / split, source / split / "images"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError(f"{source}: the ultralytics backend needs a YOLO folder with images/{split}")


def _link_tree(source: Path, split: str, root: Path) -> Path:
    """A private YOLO tree of symlinks to the split's images and labels under `root`; returns its
    image folder. Ultralytics writes its labels cache beside the labels it reads, so it must never
    read them in the user's source folder."""
    from ultralytics.data.utils import IMG_FORMATS, img2label_paths

    img_dir = _yolo_split_dir(source, split)
    images = sorted(p for p in img_dir.rglob("*") if p.is_file() and p.suffix[1:].lower() in IMG_FORMATS)
    out_img, out_lab = root / "images" / split, root / "labels" / split
    for p, lab in zip(images, img2label_paths([str(p) for p in images]), strict=True):
        rel = p.relative_to(img_dir)
        (out_img / rel).parent.mkdir(parents=True, exist_ok=True)
        (out_img / rel).symlink_to(p.resolve())
        if Path(lab).is_file():
            target = (out_lab / rel).with_suffix(".txt")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(Path(lab).resolve())
    return out_img


def _payloads(store: Path, split: str, limit: int = 256) -> list[bytes]:
    with open_store(store) as s:
        idx = s.indices(split)[:limit]
        return [bytes(s.payload(int(i))) for i in idx]


def _reference(name: str, cfg: BenchConfig, work: Callable[[int, np.ndarray], None], n_items: int,
               progress: Callable[[int], None] | None) -> BenchResult:
    """A tight loop of `work(i, out)` over the items with the benchmark's threads."""
    H, W = cfg.imgsz
    outs = [np.empty((H, W, 3), np.uint8) for _ in range(cfg.threads)]
    local = threading.local()
    counter = iter(range(1 << 62))
    lock = threading.Lock()

    def job(k: int) -> None:
        if not hasattr(local, "out"):
            with lock:
                local.out = outs[next(counter) % len(outs)]
        work(k % n_items, local.out)

    done = 0
    budget = cfg.seconds or 10.0
    with ThreadPoolExecutor(cfg.threads) as pool:
        for k in range(cfg.threads * 2):  # warm-up
            job(k)
        cpu0, t0 = _cpu_seconds(psutil.Process()), time.perf_counter()
        chunk = max(cfg.batch, cfg.threads * 4)
        while True:
            list(pool.map(job, range(done, done + chunk)))
            done += chunk
            if progress:
                progress(chunk)
            if (cfg.batches is not None and done >= cfg.batches * cfg.batch) or (
                    cfg.batches is None and time.perf_counter() - t0 >= budget):
                break
    dt, cpu = time.perf_counter() - t0, _cpu_seconds(psutil.Process()) - cpu0
    return BenchResult(name, "reference", done / dt, images=done, seconds=dt, cpu_percent=cpu / dt * 100,
                       cpu_ms_per_image=cpu * 1000 / done)


def _jpeg_store(cfg: BenchConfig) -> Path | None:
    return cfg.stores.get("shards") or cfg.stores.get("lmdb")


def _references(cfg: BenchConfig, bar: Callable[[str], Callable[[int], None] | None]) -> list[BenchResult]:
    """decode, work-minimum (jpeg stores) and raw-copy (a raw store), with the bench's threads."""
    results: list[BenchResult] = []
    H, W = cfg.imgsz
    jpeg_store = _jpeg_store(cfg)
    if jpeg_store is not None:
        payloads = _payloads(jpeg_store, cfg.split)
        results.append(_reference("decode", cfg, lambda i, out: decode_rgb(payloads[i]), len(payloads), bar("decode")))

        def work_min(i: int, out: np.ndarray) -> None:
            # decode once + one bilinear resample of every output pixel (what any random affine costs at least)
            img = decode_rgb(payloads[i])
            lb = letterbox_params(img.shape[0], img.shape[1], H, W)
            m = np.array([[lb.new_w / img.shape[1], 0, lb.left], [0, lb.new_h / img.shape[0], lb.top]])
            cv2.warpAffine(img, m, (W, H), dst=out, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=(114, 114, 114))

        results.append(_reference("work-minimum", cfg, work_min, len(payloads), bar("work-minimum")))
    if "raw" in cfg.stores:
        with open_store(cfg.stores["raw"]) as s:
            idx = s.indices(cfg.split)

            def copy(i: int, out: np.ndarray) -> None:
                frame = np.frombuffer(s.payload(int(idx[i])), np.uint8)
                k = min(out.size, frame.size)
                np.copyto(out.reshape(-1)[:k], frame[:k])

            results.append(_reference("raw-copy", cfg, copy, len(idx), bar("raw-copy")))
    return results


def _open_backend(name: str, cfg: BenchConfig, ultralytics_dir: Callable[[], Path]) -> tuple[Iterator[int], Callable[[], None]]:
    """Build backend `name`; FileNotFoundError / ValueError say why it cannot run here."""
    if name in ("ultralytics", "ultralytics-ram"):
        if cfg.source is None:
            raise FileNotFoundError("the ultralytics backend needs the source dataset")
        return _ultralytics_backend(cfg, name == "ultralytics-ram", ultralytics_dir())
    if name in LOADER_BACKENDS:
        b = LOADER_BACKENDS[name]  # which container each backend reads: the loaders' one table
        store = None if b.reads == "dataset" else cfg.stores.get(b.container) if b.container else _jpeg_store(cfg)
        if name != "disk" and store is None:
            raise FileNotFoundError(f"no store for the {name} backend")
        if name == "disk" and cfg.source is None:
            raise FileNotFoundError("the disk backend needs the source dataset")
        return _sainet_backend(name, cfg, store)
    if name.startswith("raw-"):
        kind = name.removeprefix("raw-")
        key = "raw" if kind != "lmdb" else "raw-lmdb"
        if key not in cfg.stores:
            raise FileNotFoundError(f"no raw {kind} store (pass --raw, or a raw store)")
        return _sainet_backend(kind, cfg, cfg.stores[key])
    raise ValueError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")


def _run_loader(name: str, cfg: BenchConfig, ultralytics_dir: Callable[[], Path], progress: Callable[[int], None] | None) -> BenchResult:
    gc.collect()
    if cfg.cold:
        evict([p for p in [*cfg.stores.values(), cfg.source] if p is not None])
    base_pss, base_anon = _pss(psutil.Process()), _pss(psutil.Process(), "Pss_Anon")
    try:
        it, close = _open_backend(name, cfg, ultralytics_dir)
    except (FileNotFoundError, ImportError, ValueError, SainetError) as e:
        return BenchResult(name, "loader", 0.0, note=f"skipped: {e}")
    try:
        return _measure(name, it, cfg, progress, base_pss, base_anon)
    finally:
        close()
        del it


def _hyp_text(cfg: BenchConfig) -> str:
    from loaders.augment.hyp import Hyp

    if not cfg.augment:
        return "letterbox only"
    h = Hyp.from_dict(cfg.hyp)
    return (f"mosaic={h.mosaic:g} mixup={h.mixup:g} hsv={h.hsv_h:g}/{h.hsv_s:g}/{h.hsv_v:g} fliplr={h.fliplr:g} "
            f"flipud={h.flipud:g} translate={h.translate:g} scale={h.scale:g} degrees={h.degrees:g} shear={h.shear:g}")


def _describe(r: BenchResult, cfg: BenchConfig) -> None:
    """Fill in what each row produced: output shape, pixels per batch, decodes per output image,
    augment settings, megapixels/s."""
    from loaders.augment.hyp import Hyp

    hw = cfg.imgsz
    if r.name == "decode":
        r.out_shape, r.decodes_per_image, r.augment = None, 1.0, "none (decode only)"
    elif r.kind == "reference":
        r.decodes_per_image = 0.0 if r.name == "raw-copy" else 1.0
        r.augment = "letterbox resample" if r.name == "work-minimum" else "none (frame copy)"
    elif r.name.startswith("ultralytics"):
        hw = (max(cfg.imgsz), max(cfg.imgsz))  # Ultralytics' train loader (rect=False) is square
        h = Hyp.from_dict(cfg.hyp)
        # Without a RAM cache, Ultralytics' Mosaic draws its 3 partners from each worker's buffer of the
        # last min(n, 8 x batch, 1000) images it loaded, kept decoded (BaseDataset.buffer): no decode.
        # MixUp's partner comes from the whole dataset: one decode (its own mosaic partners: the buffer).
        # With cache="ram" the buffer is off and every partner is a cached image.
        cached = (4 * h.mosaic + 1 - h.mosaic) * (1 + h.mixup) if cfg.augment else 1.0
        r.decodes_per_image = 0.0 if r.name == "ultralytics-ram" else (1 + h.mixup if cfg.augment else 1.0)
        r.augment = _hyp_text(cfg)
        if r.name == "ultralytics-ram":
            r.note = (r.note + "; " if r.note else "") + f"{cached:g} cached decoded images per output image"
        elif cfg.augment:
            r.note = (r.note + "; " if r.note else "") + ("mosaic partners from each worker's buffer of recently "
                                                          "loaded images, kept decoded")
    else:
        r.decodes_per_image = 0.0 if r.name.startswith("raw-") else 1.0
        r.augment = _hyp_text(cfg)
        if cfg.augment:
            r.note = (r.note + "; " if r.note else "") + "mosaic partners from the batch and its recent batches' decoded samples, mixup partners from the batch: one decode per output image"
    if r.name != "decode":
        r.out_shape = format_imgsz(hw)
        r.pixels_per_batch = cfg.batch * hw[0] * hw[1]
        if r.images_per_s > 0:
            r.megapixels_per_s = r.images_per_s * hw[0] * hw[1] / 1e6


def _fill_ratios(results: list[BenchResult]) -> None:
    """Ratios from figures of the same round: images/s between equal output shapes (or to decode,
    whose output is the source itself), megapixels/s (`mpx_vs_*`) between different ones.

    `cpu_vs_*`: the same comparison in CPU time per output image (the other's over this one's).
    On a host shared with other work, wall-clock rates swing with the load (a tight reference loop
    most of all) while CPU time per image barely moves, so this is the robust efficiency figure;
    it says nothing about how well a backend spreads over the cores (CPU % does)."""
    by = {r.name: r for r in results if r.images_per_s > 0}
    for r in results:
        if r.images_per_s <= 0:
            continue
        for ref in (*REFERENCES, "ultralytics"):
            other = by.get(ref)
            if other is None or other is r:
                continue
            if ref == "decode" or r.out_shape == other.out_shape:
                r.ratios[f"vs_{ref}"] = r.images_per_s / other.images_per_s
                if r.cpu_ms_per_image and other.cpu_ms_per_image:
                    r.ratios[f"cpu_vs_{ref}"] = other.cpu_ms_per_image / r.cpu_ms_per_image
            elif r.megapixels_per_s and other.megapixels_per_s:
                r.ratios[f"mpx_vs_{ref}"] = r.megapixels_per_s / other.megapixels_per_s


def _merge(rounds: list[list[BenchResult]]) -> list[BenchResult]:
    """One row per backend: medians over the rounds (peak memory: the largest), each round's images/s kept."""
    if len(rounds) == 1:
        for r in rounds[0]:
            r.repeats = [r.images_per_s]
        return rounds[0]
    out = []
    for rows in zip(*rounds, strict=True):
        ok = [r for r in rows if r.images_per_s > 0]
        first = rows[0]
        if not ok:
            out.append(first)
            continue

        def med(key: str, rs: list[BenchResult] = ok) -> float | None:
            vals = [getattr(r, key) for r in rs if getattr(r, key) is not None]
            return statistics.median(vals) if vals else None

        peak = lambda key, rs=ok: max((getattr(r, key) for r in rs if getattr(r, key) is not None), default=None)  # noqa: E731
        m = BenchResult(first.name, first.kind, med("images_per_s"), sum(r.batches for r in ok), sum(r.images for r in ok),
                        sum(r.seconds for r in ok), med("p50_ms"), med("p99_ms"), med("cpu_percent"), peak("pss_mb"),
                        peak("pss_anon_mb"), note=first.note, out_shape=first.out_shape, pixels_per_batch=first.pixels_per_batch,
                        decodes_per_image=first.decodes_per_image, augment=first.augment, megapixels_per_s=med("megapixels_per_s"),
                        repeats=[r.images_per_s for r in rows], cpu_ms_per_image=med("cpu_ms_per_image"))
        keys = {k for r in ok for k in r.ratios}
        m.ratios = {k: statistics.median([r.ratios[k] for r in ok if k in r.ratios]) for k in sorted(keys)}
        out.append(m)
    return out


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout meanwhile to stderr: prints, logging handlers that write to
    stdout (Ultralytics' LOGGER: "Scanning... / New cache created"), and file descriptor 1 itself
    (inherited by forked DataLoader workers), so `--json` output stays parseable."""
    moved = []
    for logger in [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]:
        for h in getattr(logger, "handlers", []):
            if isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.__stdout__):
                moved.append((h, h.setStream(sys.stderr)))
    saved_fd = None
    try:
        sys.stdout.flush()
        saved_fd = os.dup(1)
        os.dup2(2, 1)
    except (OSError, ValueError, AttributeError):
        saved_fd = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
        for h, stream in moved:
            h.setStream(stream)


def run_bench(cfg: BenchConfig, loaders: list[str], progress: _PROGRESS | None = None) -> list[BenchResult]:
    """Run the references and `loaders` (`cfg.repeats` rounds, round-robin); returns one row per
    backend with ratios filled in (medians over the rounds). Writes nothing to stdout."""
    cv2.setNumThreads(1)  # as the loaders do: parallelism comes from the same number of threads everywhere
    tree: list[Path] = []

    def bar(name: str) -> Callable[[int], None] | None:
        return progress(name, None) if progress else None

    def ultralytics_dir() -> Path:
        if not tree:
            root = Path(tempfile.mkdtemp(prefix="sainet-bench-ultralytics-", dir=cfg.scratch))
            tree.extend([root, _link_tree(cfg.source, cfg.split, root)])
        return tree[1]

    rounds = []
    with stdout_to_stderr():
        try:
            for k in range(max(1, cfg.repeats)):
                tag = f" #{k + 1}" if cfg.repeats > 1 else ""
                if cfg.cold:
                    evict([p for p in [*cfg.stores.values(), cfg.source] if p is not None])
                rows = _references(cfg, lambda name, t=tag: bar(name + t))
                rows += [_run_loader(name, cfg, ultralytics_dir, bar(name + tag)) for name in loaders]
                for r in rows:
                    _describe(r, cfg)
                _fill_ratios(rows)
                rounds.append(rows)
        finally:
            if tree:
                shutil.rmtree(tree[0], ignore_errors=True)
    return _merge(rounds)


def headline(results: list[BenchResult]) -> str:
    """One line for `make demo`: the best sainet loader against Ultralytics' own, naming the shapes
    compared (an images/s ratio only when the output shapes are equal)."""
    ours = [r for r in results if r.kind == "loader" and not r.name.startswith("ultralytics") and r.images_per_s > 0]
    if not ours:
        return "no sainet loader ran"
    best = max(ours, key=lambda r: r.megapixels_per_s or 0.0)
    text = f"best sainet loader {best.name}: {best.images_per_s:.0f} img/s at {best.out_shape} ({best.megapixels_per_s or 0:.0f} Mpx/s"
    if "vs_work-minimum" in best.ratios:
        text += f", {best.ratios['vs_work-minimum']:.2f}x work-minimum"
        if "cpu_vs_work-minimum" in best.ratios:
            text += f" ({best.ratios['cpu_vs_work-minimum']:.2f}x in CPU time per image)"
    text += ")"
    ul = next((r for r in results if r.name == "ultralytics" and r.images_per_s > 0), None)
    if ul is None:
        return text + "; Ultralytics not measured"
    if "vs_ultralytics" in best.ratios:
        return text + f"; {best.ratios['vs_ultralytics']:.2f}x Ultralytics ({ul.images_per_s:.0f} img/s), both at {ul.out_shape}"
    return (text + f"; Ultralytics {ul.images_per_s:.0f} img/s at {ul.out_shape} (square): different shapes, so only "
            f"megapixels/s compare: {best.ratios.get('mpx_vs_ultralytics', 0):.2f}x")


def host_description() -> dict:
    from sainet.profiles import choose_profile, detect_host

    host = detect_host()
    prof = choose_profile("auto", host)
    return {"profile": prof.name, "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            **host.as_dict()}


def save_results(results: list[BenchResult], cfg: BenchConfig, out_dir: Path, tag: str, plot: Path | None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"host": host_description(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "settings": {"imgsz": format_imgsz(cfg.imgsz), "batch": cfg.batch, "augment": cfg.augment, "threads": cfg.threads,
                        "prefetch": cfg.prefetch, "workers": cfg.workers, "cold": cfg.cold, "seconds": cfg.seconds,
                        "batches": cfg.batches, "repeats": cfg.repeats, "augment_settings": _hyp_text(cfg),
                        "stores": {k: str(v) for k, v in cfg.stores.items()},
                        "source": str(cfg.source) if cfg.source else None},
           "results": [asdict(r) for r in results]}
    path = out_dir / f"{tag}.json"
    path.write_text(json.dumps(doc, indent=2))
    png = plot or out_dir / f"{tag}.png"
    plot_results(results, png, f"{tag} ({doc['host']['profile']})")
    return path


def plot_results(results: list[BenchResult], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [r for r in results if r.images_per_s > 0]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rs)), 4))
    colours = ["#999999" if r.kind == "reference" else "#d9534f" if r.name.startswith("ultralytics") else "#2a7ab0" for r in rs]
    ax.bar([r.name for r in rs], [r.images_per_s for r in rs], color=colours)
    for i, r in enumerate(rs):
        ax.text(i, r.images_per_s, f"{r.images_per_s:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("images/s")
    ax.set_title(title, fontsize=9)
    plt.xticks(rotation=30, ha="right")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def prepare_stores(source: Path | None, store: Path | None, work: Path, imgsz: tuple[int, int], raw: bool,
                   raw_lmdb: bool = False) -> tuple[dict[str, Path], Path | None]:
    """The stores a bench needs: both jpeg containers (and raw shards / raw LMDB), packed once into `work`."""
    from cache_tools.pack import PackOptions, pack

    stores: dict[str, Path] = {}
    if store is not None:
        with open_store(store) as s:
            key = ("raw" if s.container == "shards" else "raw-lmdb") if s.mode == "raw" else s.container
            stores[key] = Path(store)
            source = source or (Path(s.meta["source"]) if s.meta.get("source") and Path(s.meta["source"]).exists() else None)
    if source is not None:
        work.mkdir(parents=True, exist_ok=True)
        for key, opts in (("shards", PackOptions(container="shards")), ("lmdb", PackOptions(container="lmdb")),
                          ("raw", PackOptions(container="shards", mode="raw", imgsz=imgsz)),
                          ("raw-lmdb", PackOptions(container="lmdb", mode="raw", imgsz=imgsz))):
            if key in stores or (key == "raw" and not raw) or (key == "raw-lmdb" and not raw_lmdb):
                continue
            target = work / f"{key}-{format_imgsz(imgsz) if key.startswith('raw') else 'jpeg'}"
            if not (target / INDEX_NAME).is_file():
                pack(source, target, PackOptions(**{**opts.__dict__, "force": True}))
            stores[key] = target
    return stores, source


def parse_loaders(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]
