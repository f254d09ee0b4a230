"""The reference rows measured in the same run with the same threads: decode, work-minimum, raw-copy."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import psutil

from cache_tools.store import open_store
from sainet.bench.backends import jpeg_store
from sainet.bench.results import BenchConfig, BenchResult
from sainet.bench.sampling import tree_cpu_seconds
from sainet.core.geometry import letterbox_params
from sainet.core.imaging import decode_rgb


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
        cpu0, t0 = tree_cpu_seconds(psutil.Process()), time.perf_counter()
        chunk = max(cfg.batch, cfg.threads * 4)
        while True:
            list(pool.map(job, range(done, done + chunk)))
            done += chunk
            if progress:
                progress(chunk)
            if (cfg.batches is not None and done >= cfg.batches * cfg.batch) or (
                    cfg.batches is None and time.perf_counter() - t0 >= budget):
                break
    dt, cpu = time.perf_counter() - t0, tree_cpu_seconds(psutil.Process()) - cpu0
    return BenchResult(name, "reference", done / dt, images=done, seconds=dt, cpu_percent=cpu / dt * 100,
                       cpu_ms_per_image=cpu * 1000 / done)

def run_references(cfg: BenchConfig, bar: Callable[[str], Callable[[int], None] | None]) -> list[BenchResult]:
    """decode, work-minimum (jpeg stores) and raw-copy (a raw store), with the bench's threads."""
    results: list[BenchResult] = []
    H, W = cfg.imgsz
    jpeg = jpeg_store(cfg)
    if jpeg is not None:
        payloads = _payloads(jpeg, cfg.split)
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
