"""The torch executor alone on a CUDA device, phase by phase (issue 21): batch 32 of 1440x808
sources already on the device -> 1440x832, full train augment (mosaic 1.0, HSV, mixup 0.15).

    python benchmarks/gpu_phases.py --json                     # eager and fused (torch.compile)
    python benchmarks/gpu_phases.py --batch 16 --imgsz 640 --src 960x540 --batches 30

Per batch, for the eager ops and the compiled regions: host ms to plan + pack + enqueue
everything (no synchronisation: what the loader thread spends), CUDA-event ms of the whole render
and of its phases (plan copy, stacking the sources, each tile slot, colour), and the peak device
memory the render allocated. Medians over `--batches` batches after a warm-up (which compiles).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from loaders.augment import torch_exec as tx
from loaders.augment.hyp import Hyp
from loaders.augment.plan import plan_batch
from sainet.core.geometry import parse_imgsz, parse_wxh


def _phases(plan, sources: list[torch.Tensor], scales: list, fuse: bool) -> tuple[float, list[tuple[str, torch.cuda.Event]]]:  # noqa: ANN001
    """Enqueue one render the way `render_batch` does, with an event after each phase; returns host
    ms (plan excluded) and the events."""
    marks: list[tuple[str, torch.cuda.Event]] = []

    def mark(name: str) -> None:
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        marks.append((name, e))

    t0 = time.perf_counter()
    mark("start")
    src_hw = [(int(s.shape[0]), int(s.shape[1])) for s in sources]
    packed = tx.pack_plan(plan, scales, src_hw)
    params = tx._to_device(packed, sources[0].device)
    mark("plan copy")
    planes = tx.stack_sources(sources, src_hw, packed.pad_hw, torch.uint8 if fuse else torch.float32)
    mark("stack sources")
    canvas = tx._geometry(packed, params, planes, fuse, on_slot=lambda k, n: mark(f"slot {k} ({n} images)"))
    tx._colour(packed, params, canvas, fuse)
    mark("colour (mixup, HSV, uint8 out)")
    return (time.perf_counter() - t0) * 1e3, marks


def run(batch: int, out_hw: tuple[int, int], src_wh: tuple[int, int], batches: int, fuse: bool) -> dict:
    sw, sh = src_wh
    rng = np.random.default_rng(0)
    sources = [torch.from_numpy(rng.integers(0, 255, (sh, sw, 3), dtype=np.uint8)).cuda() for _ in range(batch)]
    labels = [(np.zeros(4, np.int32), np.tile([[0.5, 0.5, 0.2, 0.2]], (4, 1)).astype(np.float32))] * batch
    scales, hyp = [(1.0, 1.0)] * batch, Hyp(mosaic=1.0, mixup=0.15)
    for seed in range(3):  # warm-up: the allocator, and the compile of every region variant
        _phases(plan_batch(np.random.default_rng(seed), [(sw, sh)] * batch, labels, out_hw, hyp, augment=True), sources, scales, fuse)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    host, plan_ms, total, per = [], [], [], {}
    for k in range(batches):
        t0 = time.perf_counter()
        plan = plan_batch(np.random.default_rng(100 + k), [(sw, sh)] * batch, labels, out_hw, hyp, augment=True)
        plan_ms.append((time.perf_counter() - t0) * 1e3)
        ms, marks = _phases(plan, sources, scales, fuse)
        host.append(ms)
        torch.cuda.synchronize()
        total.append(marks[0][1].elapsed_time(marks[-1][1]))
        for (_, a), (name, b) in zip(marks, marks[1:]):  # noqa: B905 - consecutive pairs
            per.setdefault(name, []).append(a.elapsed_time(b))
    med = statistics.median
    gpu_ms = med(total)
    return {"fuse": fuse, "gpu_ms_per_batch": round(gpu_ms, 3), "img_per_s_gpu": round(batch / gpu_ms * 1e3, 1),
            "host_enqueue_ms": round(med(host), 3), "plan_ms": round(med(plan_ms), 3),
            "phases_ms": {k: round(med(v), 3) for k, v in per.items()},
            "peak_bytes": torch.cuda.max_memory_allocated() - base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--imgsz", default="1440x832")
    ap.add_argument("--src", default="1440x808")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_phases.py times CUDA kernels: no CUDA device here (benchmarks/gpu_budget.py counts without one)")
    out = {"device": torch.cuda.get_device_name(0), "batch": args.batch, "imgsz": args.imgsz, "src": args.src, "runs": []}
    for fuse in (False, True):
        try:
            out["runs"].append(run(args.batch, parse_imgsz(args.imgsz), parse_wxh(args.src), args.batches, fuse))
        except Exception as e:  # noqa: BLE001 - a compiler failure is a result to report, the eager row stands
            out["runs"].append({"fuse": fuse, "error": repr(e)})
    if tx._FUSE_FAILED:
        out["fuse_failed"] = tx._FUSE_FAILED
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
