"""`sainet bench-loader`: every backend on the same data and settings, side by side in one run.

For each backend: warm up, then pull batches for a fixed time or count, recording images/s,
batch latency (p50/p99 of the time the consumer waits for each batch), CPU% of the process tree,
and peak memory as summed PSS of the process tree above the idle baseline (loader worker
processes included, all of which are loader cost). References measured in the same run, with the
same threads:

- decode: the same JPEGs decoded in a tight loop (the ceiling without augmentation);
- work-minimum: decode once plus one resample of every output pixel into the training shape
  (the ceiling for any loader that augments);
- raw-copy: raw frames copied out of the store (the ceiling for raw stores);
- ultralytics: its YOLODataset + InfiniteDataLoader on the same images and hyperparameters.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
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
from sainet.errors import SainetError
from sainet.geometry import format_imgsz, letterbox_params
from sainet.imaging import decode_rgb

__all__ = ["BenchResult", "BenchConfig", "run_bench", "evict", "BACKENDS", "REFERENCES"]

log = logging.getLogger(__name__)
BACKENDS = ("disk", "ram", "shm", "lmdb", "dali", "ultralytics", "ultralytics-ram")
REFERENCES = ("decode", "work-minimum", "raw-copy")


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
    """Peak PSS (total and anonymous) of the process tree, sampled in the background."""

    def __init__(self, period: float = 0.25) -> None:
        self.proc = psutil.Process()
        self.period = period
        self.peak = 0
        self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        roll = [_rollup(p.pid) for p in _tree(self.proc)]
        self.peak = max(self.peak, sum(r.get("Pss", 0) for r in roll))
        self.peak_anon = max(self.peak_anon, sum(r.get("Pss_Anon", 0) for r in roll))

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
    cpu = (_cpu_seconds(psutil.Process()) - cpu0) / dt * 100 if dt else 0.0
    ms = np.array(lat) * 1000
    return BenchResult(name, "loader", images / dt if dt else 0.0, len(lat), images, dt,
                       float(np.percentile(ms, 50)) if len(ms) else None, float(np.percentile(ms, 99)) if len(ms) else None,
                       cpu, max(0, sampler.peak - base_pss) / 1e6, max(0, sampler.peak_anon - base_anon) / 1e6)


def _loop(make: Callable[[], Iterator[dict]]) -> Iterator[int]:
    """Endless batches from a loader factory (one epoch after another): images per batch."""
    while True:
        got = False
        for b in make():
            got = True
            yield len(b["im_file"]) if "im_file" in b else int(b["img"].shape[0])
        if not got:
            return


def _sainet_backend(kind: str, cfg: BenchConfig, store: Path) -> tuple[Iterator[int], Callable[[], None]]:
    from loaders import build_loader

    data = cfg.source if kind == "disk" else store
    loader = build_loader(data, kind, batch_size=cfg.batch, imgsz=cfg.imgsz, split=cfg.split, augment=cfg.augment,
                          threads=cfg.threads, prefetch=cfg.prefetch, device=None)
    return _loop(lambda: iter(loader)), loader.close


def _ultralytics_backend(cfg: BenchConfig, cache: bool) -> tuple[Iterator[int], Callable[[], None]]:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_dataloader
    from ultralytics.data.dataset import YOLODataset

    from sainet.datasets import open_dataset

    ds = open_dataset(cfg.source)
    hyp = get_cfg(overrides={"imgsz": max(cfg.imgsz), "cache": "ram" if cache else False})
    if not cfg.augment:
        hyp.mosaic = 0.0
    img_dir = _yolo_split_dir(cfg.source, cfg.split)
    dataset = YOLODataset(img_path=str(img_dir), imgsz=max(cfg.imgsz), augment=cfg.augment, rect=False, cache="ram" if cache else False,
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
    t0 = time.perf_counter()
    budget = cfg.seconds or 10.0
    with ThreadPoolExecutor(cfg.threads) as pool:
        for k in range(cfg.threads * 2):  # warm-up
            job(k)
        t0 = time.perf_counter()
        chunk = max(cfg.batch, cfg.threads * 4)
        while True:
            list(pool.map(job, range(done, done + chunk)))
            done += chunk
            if progress:
                progress(chunk)
            if (cfg.batches is not None and done >= cfg.batches * cfg.batch) or (
                    cfg.batches is None and time.perf_counter() - t0 >= budget):
                break
    dt = time.perf_counter() - t0
    return BenchResult(name, "reference", done / dt, images=done, seconds=dt)


def run_bench(cfg: BenchConfig, loaders: list[str], progress: Callable[[str, int | None], Callable[[int], None]] | None = None) -> list[BenchResult]:
    """Run the references and `loaders`; returns them all with ratios filled in."""
    results: list[BenchResult] = []
    cv2.setNumThreads(1)  # as the loaders do: parallelism comes from the same number of threads everywhere
    jpeg_store = cfg.stores.get("shards") or cfg.stores.get("lmdb")
    H, W = cfg.imgsz

    def bar(name: str) -> Callable[[int], None] | None:
        return progress(name, None) if progress else None

    if cfg.cold:
        evict([p for p in [*cfg.stores.values(), cfg.source] if p is not None])
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
        del payloads
    if "raw" in cfg.stores:
        with open_store(cfg.stores["raw"]) as s:
            idx = s.indices(cfg.split)
            rs = s

            def copy(i: int, out: np.ndarray) -> None:
                frame = np.frombuffer(rs.payload(int(idx[i])), np.uint8)
                if frame.size == out.size:
                    np.copyto(out.reshape(-1), frame)
                else:
                    out.reshape(-1)[: min(out.size, frame.size)] = frame[: min(out.size, frame.size)]

            results.append(_reference("raw-copy", cfg, copy, len(idx), bar("raw-copy")))
    for name in loaders:
        gc.collect()
        if cfg.cold:
            evict([p for p in [*cfg.stores.values(), cfg.source] if p is not None])
        base_pss, base_anon = _pss(psutil.Process()), _pss(psutil.Process(), "Pss_Anon")
        try:
            if name in ("ultralytics", "ultralytics-ram"):
                if cfg.source is None:
                    raise FileNotFoundError("the ultralytics backend needs the source dataset")
                it, close = _ultralytics_backend(cfg, cache=name == "ultralytics-ram")
            elif name in ("shm", "ram", "dali", "lmdb", "disk"):
                store = {"shm": cfg.stores.get("shards"), "lmdb": cfg.stores.get("lmdb"), "ram": jpeg_store,
                         "dali": jpeg_store, "disk": None}[name]
                if name != "disk" and store is None:
                    raise FileNotFoundError(f"no store for the {name} backend")
                if name == "disk" and cfg.source is None:
                    raise FileNotFoundError("the disk backend needs the source dataset")
                it, close = _sainet_backend(name, cfg, store)
            elif name.startswith("raw-"):
                kind = name.removeprefix("raw-")
                key = "raw" if kind != "lmdb" else "raw-lmdb"
                if key not in cfg.stores:
                    raise FileNotFoundError(f"no raw {kind} store (pass --raw, or a raw store)")
                it, close = _sainet_backend(kind, cfg, cfg.stores[key])
            else:
                raise ValueError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)}, raw-shm, raw-lmdb)")
        except (FileNotFoundError, ImportError, ValueError, SainetError) as e:
            results.append(BenchResult(name, "loader", 0.0, note=f"skipped: {e}"))
            continue
        try:
            results.append(_measure(name, it, cfg, bar(name), base_pss, base_anon))
        finally:
            close()
            del it
    refs = {r.name: r.images_per_s for r in results if r.images_per_s > 0}
    for r in results:
        for ref in (*REFERENCES, "ultralytics"):
            if ref in refs and r.name != ref and r.images_per_s > 0:
                r.ratios[f"vs_{ref}"] = r.images_per_s / refs[ref]
    return results


def host_description() -> dict:
    from sainet.profiles import detect_host, nearest_profile

    host = detect_host()
    prof, _ = nearest_profile(host)
    return {"profile": prof.name, "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            **host.as_dict()}


def save_results(results: list[BenchResult], cfg: BenchConfig, out_dir: Path, tag: str, plot: Path | None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"host": host_description(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "settings": {"imgsz": format_imgsz(cfg.imgsz), "batch": cfg.batch, "augment": cfg.augment, "threads": cfg.threads,
                        "prefetch": cfg.prefetch, "workers": cfg.workers, "cold": cfg.cold, "seconds": cfg.seconds,
                        "batches": cfg.batches, "stores": {k: str(v) for k, v in cfg.stores.items()},
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
