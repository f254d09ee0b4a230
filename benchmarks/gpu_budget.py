"""The GPU path's hardware budget, counted without a GPU (issue 21).

    python benchmarks/gpu_budget.py --json                     # batch 32, 1440x808 sources -> 832x1440
    python benchmarks/gpu_budget.py --batch 8 --imgsz 640 --src 960x540 --batches 20

What the DALI loader does per batch once DALI has decoded it (`loaders.dali.DaliAssembler`):
draw the plan (`LoaderDataset.plan` -> `plan_batch`), pack it and launch the torch executor
(`render_batch`), collate the boxes. Here the decoded sources are tensors on PyTorch's ``meta``
device: every aten op is dispatched as on a GPU (shapes, dtypes, Python and dispatcher costs) but
no pixel is computed. A `TorchDispatchMode` sees each op and counts

- ``bytes_per_batch``: device memory read + written: every tensor argument's distinct elements
  (stride-0 broadcast dims once) plus every output, for each op that computes (views, ``empty``
  and metadata ops move nothing). An op is assumed to read its inputs and write its outputs once:
  what a single kernel per aten op does on a GPU (fused kernels move less, caches may move less);
- ``kernels_per_batch``: ops that compute or copy (one kernel each on CUDA, as launched eagerly);
- ``peak_device_bytes``: the most bytes held at once by live tensors the executor made, plus
  the sources (tracked per storage at op boundaries);
- ``host_ms_per_batch``: wall time of plan + pack + launches + collate, median (and min) over
  ``--batches`` batches, counting off. On ``meta`` most ops run Python reference code (~0.4 ms an
  op), far slower than a CUDA launch, so the launches are timed on CPU tensors of a 16-pixel-high
  copy of the batch (the same draws, hence the same ops and the same packing; a CPU eager op on a
  few hundred bytes costs about what a CUDA launch does, 5-10 us), while the plan and the collate
  run at full size. The launches are the eager ops' (165 per batch), or with ``--host-fused`` the
  compiled regions' (compiled on the CPU first, which takes minutes here).

The unavoidable minimum is the uint8 sources read once and the uint8 batch written once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import weakref
from collections.abc import Callable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from loaders.augment import torch_exec
from loaders.augment.hyp import Hyp
from loaders.augment.plan import plan_batch
from loaders.augment.torch_exec import render_batch
from loaders.collate import collate_boxes
from sainet.core.geometry import parse_imgsz, parse_wxh

#: ops that launch no kernel: allocation without a fill, views, metadata
_FREE = {"empty", "empty_strided", "empty_like", "view", "_unsafe_view", "as_strided", "permute", "transpose", "t",
         "expand", "slice", "select", "unsqueeze", "squeeze", "alias", "detach", "unbind", "split", "split_with_sizes",
         "reshape", "view_as", "unfold", "lift_fresh", "_to_copy_noop", "is_same_size", "sym_size", "sym_stride",
         "sym_numel", "sym_storage_offset", "_local_scalar_dense", "set_", "resize_", "squeeze_", "unsqueeze_",
         "t_", "transpose_", "as_strided_", "_reshape_alias", "chunk", "diagonal", "narrow"}


def _distinct_bytes(t: torch.Tensor) -> int:
    """Bytes an op reads of `t`: broadcast (stride-0) dimensions count once."""
    n = 1
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if stride != 0:
            n *= size
    return n * t.element_size()


class TrafficCounter(TorchDispatchMode):
    """Counts bytes read + written, kernels, and live bytes of every aten op run under it."""

    def __init__(self, held: int = 0) -> None:
        super().__init__()
        self.read = self.written = self.kernels = 0
        self.by_op: dict[str, int] = {}
        self._live: dict[int, tuple[int, list]] = {}  # storage key -> (bytes, weakrefs of tensors using it)
        self.held, self.peak = held, held
        self._inside = 0

    def _track(self, t: torch.Tensor) -> None:
        key = t.untyped_storage()._cdata
        nbytes, refs = self._live.setdefault(key, (t.untyped_storage().nbytes(), []))
        refs.append(weakref.ref(t))

    def _live_bytes(self) -> int:
        for key in [k for k, (_, refs) in self._live.items() if not any(r() is not None for r in refs)]:
            del self._live[key]
        return sum(n for n, _ in self._live.values())

    def fused(self, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """`fn` counted as one kernel (what `torch.compile` makes of it: see --compile-check): its
        tensor arguments read once, its outputs written once, nothing in between in memory."""
        def run(*args: object) -> torch.Tensor:
            self._inside += 1
            try:
                out = fn(*args)
            finally:
                self._inside -= 1
            r = sum(_distinct_bytes(t) for t in args if isinstance(t, torch.Tensor))
            w = _distinct_bytes(out)
            self.read, self.written, self.kernels = self.read + r, self.written + w, self.kernels + 1
            self.by_op[fn.__name__] = self.by_op.get(fn.__name__, 0) + r + w
            self._track(out)
            self.peak = max(self.peak, self.held + self._live_bytes())
            return out
        return run

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - the torch protocol
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._inside:
            return out
        name = func.overloadpacket.__name__
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        for t in outs:
            self._track(t)
        if name not in _FREE and not func.is_view:
            ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            inplace = {t.untyped_storage()._cdata for t in outs}
            # an in-place / out= op's output is also an input: read once (unless it only writes), written once
            r = sum(_distinct_bytes(t) for t in ins if t.untyped_storage()._cdata not in inplace or not name.endswith(("fill_", "copy_")))
            w = sum(_distinct_bytes(t) for t in outs)
            if name.startswith(("fill", "zero")) or name in ("full", "full_like", "scalar_tensor", "linspace", "arange", "zeros", "ones"):
                r = 0
            self.read += r
            self.written += w
            self.kernels += 1
            self.by_op[name] = self.by_op.get(name, 0) + r + w
        self.peak = max(self.peak, self.held + self._live_bytes())
        return out


def _labels(rng: np.random.Generator, n: int, boxes: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for _ in range(n):
        xy = rng.uniform(0.2, 0.8, (boxes, 2))
        wh = rng.uniform(0.02, 0.3, (boxes, 2))
        out.append((rng.integers(0, 2, boxes).astype(np.int32), np.concatenate([xy, wh], 1).astype(np.float32)))
    return out


def one_batch(rng: np.random.Generator, sizes: list, labels: list, out_hw: tuple[int, int], hyp: Hyp,
              sources: list[torch.Tensor], scales: list, fuse: bool) -> torch.Tensor:
    """Everything the host does for one GPU batch: plan, pack + launch the render, collate the boxes."""
    plan = plan_batch(rng, sizes, labels, out_hw, hyp, augment=True, mosaic=hyp.mosaic > 0, n_out=len(sources))
    img = render_batch(plan, sources, scales, fuse=fuse)
    collate_boxes(plan)
    return img


def _count(fuse: bool, src_bytes: int, args: tuple) -> list[TrafficCounter]:
    """Four batches' counts (the draws vary: mosaic/letterbox/mixup counts). `fuse`: each region
    `torch_exec` compiles counted as the one kernel it becomes."""
    counts = []
    real = torch_exec._kernel
    for seed in range(4):
        c = TrafficCounter(held=src_bytes)
        torch_exec._kernel = lambda name, fn, fuse, c=c: c.fused(fn) if fuse else fn  # noqa: ARG005
        try:
            with c:
                one_batch(np.random.default_rng(seed), *args, fuse=fuse)
        finally:
            torch_exec._kernel = real
        counts.append(c)
    return counts


def _summary(counts: list[TrafficCounter]) -> dict:
    by_op: dict[str, float] = {}
    for c in counts:
        for k, v in c.by_op.items():
            by_op[k] = by_op.get(k, 0) + v / len(counts)
    return {"bytes_per_batch": round(statistics.mean(c.read + c.written for c in counts)),
            "bytes_read": round(statistics.mean(c.read for c in counts)),
            "bytes_written": round(statistics.mean(c.written for c in counts)),
            "kernels_per_batch": statistics.mean(c.kernels for c in counts),
            "peak_device_bytes": max(c.peak for c in counts),
            "bytes_by_op": {k: round(v) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])}}


def _host_batch(seed: int, full: tuple, tiny: tuple, hyp: Hyp, fuse: bool) -> float:
    """ms of one batch's host work: the plan and collate at full size, pack + launches on the tiny
    copy (its own plan, drawn with the same seed, is made outside the timing)."""
    sizes, labels, out_hw, _ = full
    t_sizes, t_out_hw, t_sources, scales = tiny
    small = plan_batch(np.random.default_rng(seed), t_sizes, labels, t_out_hw, hyp, augment=True, mosaic=hyp.mosaic > 0)
    t0 = time.perf_counter()
    plan = plan_batch(np.random.default_rng(seed), sizes, labels, out_hw, hyp, augment=True, mosaic=hyp.mosaic > 0)
    collate_boxes(plan)
    render_batch(small, t_sources, scales, fuse=fuse)
    return (time.perf_counter() - t0) * 1e3


def _time(fn: Callable[[int], float], n: int) -> list[float]:
    fn(-1)  # warm-up
    return [fn(k) for k in range(n)]


def measure(batch: int, out_hw: tuple[int, int], src_wh: tuple[int, int], hyp: Hyp, boxes: int, batches: int,
            host_fused: bool = False) -> dict:
    sw, sh = src_wh
    rng = np.random.default_rng(0)
    sizes, labels = [(sw, sh)] * batch, _labels(rng, batch, boxes)
    sources = [torch.empty((sh, sw, 3), dtype=torch.uint8, device="meta") for _ in range(batch)]
    scales = [(1.0, 1.0)] * batch
    src_bytes = sum(s.numel() for s in sources)
    args = (sizes, labels, out_hw, hyp, sources, scales)
    fused, eager = _summary(_count(True, src_bytes, args)), _summary(_count(False, src_bytes, args))
    th, tw = 16, max(16, round(16 * out_hw[1] / out_hw[0]))
    ts = (max(8, round(sw * th / sh)), th)
    tiny = ([ts] * batch, (th, tw), [torch.zeros((ts[1], ts[0], 3), dtype=torch.uint8) for _ in range(batch)], scales)
    host = _time(lambda k: _host_batch(k + 100, (sizes, labels, out_hw, sources), tiny, hyp, host_fused), batches)
    return {
        "batch": batch, "imgsz_hw": list(out_hw), "src_wh": [sw, sh], "boxes_per_image": boxes,
        "hyp": {"mosaic": hyp.mosaic, "mixup": hyp.mixup, "hsv": [hyp.hsv_h, hyp.hsv_s, hyp.hsv_v], "fliplr": hyp.fliplr},
        **fused, "minimum_bytes": src_bytes + batch * 3 * out_hw[0] * out_hw[1],
        "host_ms_per_batch": round(statistics.median(host), 3), "host_ms_min": round(min(host), 3),
        "host_batches": batches, "host_launches": "compiled regions" if host_fused else "eager ops", "load_avg_1m": round(os.getloadavg()[0], 2),
        "eager": eager,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--imgsz", default="1440x832", help="output WIDTHxHEIGHT (or one number: square)")
    ap.add_argument("--src", default="1440x808", help="source WIDTHxHEIGHT")
    ap.add_argument("--boxes", type=int, default=4, help="boxes per source image")
    ap.add_argument("--batches", type=int, default=20, help="batches timed for host_ms (median)")
    ap.add_argument("--mixup", type=float, default=0.15)
    ap.add_argument("--host-fused", action="store_true",
                    help="time the launches of the compiled regions (compiles them on the CPU first: minutes) instead of eager ops")
    ap.add_argument("--json", action="store_true", help="one JSON object only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    r = measure(args.batch, parse_imgsz(args.imgsz), parse_wxh(args.src), Hyp(mosaic=1.0, mixup=args.mixup), args.boxes, args.batches,
                args.host_fused)
    if args.json:
        print(json.dumps(r))
        return
    print(f"batch {r['batch']}, sources {args.src} -> {args.imgsz}, full train augment (mosaic 1.0, HSV, mixup {args.mixup})")
    print(f"device traffic   {r['bytes_per_batch'] / 1e9:8.2f} GB per batch ({r['bytes_read'] / 1e9:.2f} read, "
          f"{r['bytes_written'] / 1e9:.2f} written; minimum {r['minimum_bytes'] / 1e9:.2f})")
    print(f"kernels          {r['kernels_per_batch']:8.1f} per batch")
    print(f"peak device      {r['peak_device_bytes'] / 1e9:8.2f} GB")
    print(f"host             {r['host_ms_per_batch']:8.2f} ms per batch (median of {args.batches}; min {r['host_ms_min']:.2f}; load {r['load_avg_1m']})")
    for k, v in list(r["bytes_by_op"].items())[:8]:
        print(f"  {k:24s} {v / 1e9:8.2f} GB")


if __name__ == "__main__":
    main()
