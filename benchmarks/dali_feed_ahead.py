"""Does DALI get batch k+1 while batch k is being taken? (issue 21) Two assembler threads, as in
`loaders.dali.DaliLoader` (assemblers = 2), each: submit a batch, then take it.

    python benchmarks/dali_feed_ahead.py                      # DALI CPU backend, 8 x 640x360 JPEGs
    python benchmarks/dali_feed_ahead.py --device mixed --batch 32 --size 1440x808

Prints one JSON object: the mean wall time of one decode run (one thread alone, submit then take),
and with two threads (each sleeping half a decode before its submit, as if reading the batch's
bytes, so that submits land while the other thread takes) the mean time a `submit` call took (waiting for the feed's lock included) and
its share of a decode. Before issue 21 `take` held the feed's lock across ``pipe.outputs()``: the
other thread's submit waited for the whole decode.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import threading
import time

import numpy as np
from PIL import Image

from loaders.dali import DaliFeed
from sainet.core.geometry import parse_wxh


def _jpegs(n: int, w: int, h: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        img = np.clip(rng.normal(128, 40, (h // 8, w // 8, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).resize((w, h)).save(buf, "JPEG", quality=90 - k % 5)
        out.append(np.frombuffer(buf.getvalue(), np.uint8))
    return out


def measure(device: str, batch: int, w: int, h: int, runs: int, threads: int, read: bool = True) -> dict:
    feed = DaliFeed(batch, threads, device, 0 if device == "mixed" else None)
    data = _jpegs(batch, w, h)
    feed.take(feed.submit(data))  # warm-up
    decode = []
    for _ in range(runs):
        t0 = time.perf_counter()
        feed.take(feed.submit(data))
        decode.append(time.perf_counter() - t0)
    waits: list[float] = []
    lock = threading.Lock()

    def assembler() -> None:
        for _ in range(runs):
            time.sleep(d / 2 if read else 0)  # reading the next batch's bytes (the loader's pool): its submit lands mid-take
            t0 = time.perf_counter()
            ticket = feed.submit(data)
            with lock:
                waits.append(time.perf_counter() - t0)
            feed.take(ticket)

    d = statistics.mean(decode)
    workers = [threading.Thread(target=assembler) for _ in range(2)]
    t0 = time.perf_counter()
    for th in workers:
        th.start()
    for th in workers:
        th.join()
    both = time.perf_counter() - t0
    return {"device": device, "batch": batch, "size": f"{w}x{h}", "decode_ms": round(d * 1e3, 2),
            "submit_ms_mean": round(statistics.mean(waits) * 1e3, 3), "submit_ms_max": round(max(waits) * 1e3, 3),
            "submit_share_of_decode": round(statistics.mean(waits) / d, 4),
            "two_assemblers_ms_per_batch": round(both / (2 * runs) * 1e3, 2),
            "decode_img_per_s": round(batch / d, 1), "two_assemblers_img_per_s": round(2 * runs * batch / both, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "mixed"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", default="640x360", help="JPEG WIDTHxHEIGHT")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="DALI threads (the loader gives DALI its --threads)")
    ap.add_argument("--no-read", action="store_true", help="no half-decode sleep before each submit: DALI's own rate")
    args = ap.parse_args()
    w, h = parse_wxh(args.size)
    print(json.dumps(measure(args.device, args.batch, w, h, args.runs, args.threads, not args.no_read)))


if __name__ == "__main__":
    main()
