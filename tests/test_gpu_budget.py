"""The GPU path's device-traffic budget (benchmarks/gpu_budget.py, issue 21), counted on meta tensors:
the counter counts what it claims, and the GPU path stays within 6 GB per batch."""

from __future__ import annotations

import numpy as np
import torch

from loaders.augment.hyp import Hyp
from tests.bench_scripts import load


def _budget():
    return load("gpu_budget")


def test_counter_counts_reads_writes_kernels_and_skips_views():
    g = _budget()
    a = torch.empty(1000, device="meta")
    b = torch.empty(1, device="meta").expand(1000)  # a broadcast: read once
    with g.TrafficCounter() as c:
        v = a.view(10, 100).t()  # views: no kernel, no bytes
        out = a + b
        out.mul_(2.0)  # in place: read and written
    assert v.shape == (100, 10)
    assert c.kernels == 2
    assert c.read == 4000 + 4 + 4000 and c.written == 4000 + 4000


def test_fused_region_is_one_kernel_of_its_inputs_and_output():
    g = _budget()
    x = torch.empty(3, 50, 60, device="meta", dtype=torch.uint8)

    def region(t):
        return (t.float() * 1.5).round().clamp(0, 255).to(torch.uint8)

    with g.TrafficCounter() as c:
        c.fused(region)(x)
    assert c.kernels == 1 and c.read == x.numel() and c.written == x.numel()


def test_gpu_path_stays_within_the_device_traffic_budget():
    """Batch 32, 1440x808 -> 1440x832, mosaic 1.0, HSV, mixup 0.15: the compiled executor's kernels
    move <= 6 GB a batch (measured 1.93 GB; the eager ops 60 GB), in a fixed number of kernels."""
    g = _budget()
    rng = np.random.default_rng(0)
    sizes, labels = [(1440, 808)] * 32, g._labels(rng, 32, 4)
    sources = [torch.empty((808, 1440, 3), dtype=torch.uint8, device="meta") for _ in range(32)]
    args = (sizes, labels, (832, 1440), Hyp(mosaic=1.0, mixup=0.15), sources, [(1.0, 1.0)] * 32)
    fused = g._summary(g._count(True, 32 * 808 * 1440 * 3, args))
    assert fused["bytes_per_batch"] <= 6e9, fused["bytes_per_batch"]
    assert fused["kernels_per_batch"] <= 20 and fused["peak_device_bytes"] < 1e9
