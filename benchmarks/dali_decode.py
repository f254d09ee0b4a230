"""JPEG decode throughput of one store: DALI `mixed` (GPU, when CUDA is present), DALI `cpu`, and
simplejpeg (libjpeg-turbo) threads, side by side in one run.

    python benchmarks/dali_decode.py --store /dev/shm/sainet-bench/stores/shards-jpeg --batch 32 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from cache_tools import open_store
from sainet.core.imaging import decode_rgb


def dali_rate(arrays: list[np.ndarray], device: str, batch: int, threads: int, seconds: float) -> float:
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=0 if device == "mixed" else None, prefetch_queue_depth=2)
    def pipe():  # noqa: ANN202
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
        return fn.decoders.image(jpegs, device=device, output_type=types.RGB)

    p = pipe()
    p.build()
    k, n, t0 = 0, 0, None
    while True:
        chunk = [arrays[(k + i) % len(arrays)] for i in range(batch)]
        k += batch
        p.feed_input("jpegs", chunk)
        (out,) = p.run()
        if device == "mixed":
            torch.cuda.synchronize()
        if t0 is None:  # the first batch includes set-up
            t0 = time.perf_counter()
            continue
        n += batch
        if time.perf_counter() - t0 >= seconds:
            return n / (time.perf_counter() - t0)


def turbo_rate(arrays: list[np.ndarray], threads: int, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        while time.perf_counter() - t0 < seconds:
            list(pool.map(decode_rgb, arrays[:64]))
            n += min(64, len(arrays))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    with open_store(args.store) as s:
        arrays = [np.frombuffer(bytes(s.payload(i)), np.uint8) for i in range(min(len(s), 256))]
    rows = {"simplejpeg_threads": turbo_rate(arrays, args.threads, args.seconds),
            "dali_cpu": dali_rate(arrays, "cpu", args.batch, args.threads, args.seconds)}
    if torch.cuda.is_available():
        rows["dali_mixed"] = dali_rate(arrays, "mixed", args.batch, args.threads, args.seconds)
    print(json.dumps({k: round(v, 1) for k, v in rows.items()}, indent=2))


if __name__ == "__main__":
    main()
