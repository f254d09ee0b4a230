"""Host ms per batch of the GPU path, two source trees measured alternately (issue 21): on a shared
machine the load changes minute to minute, so before/after figures are taken in turns.

    git archive 89650dd | tar -x -C /tmp/before        # the tree before (it has gpu_budget.py)
    python benchmarks/gpu_host_ab.py /tmp/before . --rounds 3

Each round runs, for every tree in a fresh interpreter, `gpu_budget._host_batch` over `--batches`
batches (plan + collate at full size, pack + launches on the 16-pixel copy: see gpu_budget.py) and
prints the median and min ms with the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import inspect, json, os, statistics, sys
root = sys.argv[1]
sys.path[:0] = [root, root + "/benchmarks"]
import numpy as np, torch
torch.set_num_threads(1)
import gpu_budget as g
import loaders.augment.plan as plan_module
from loaders.augment.hyp import Hyp
assert plan_module.__file__.startswith(root), plan_module.__file__
hyp = Hyp(mosaic=1.0, mixup=0.15)
labels = g._labels(np.random.default_rng(0), 32, 4)
tiny = ([(28, 16)] * 32, (16, 28), [torch.zeros((16, 28, 3), dtype=torch.uint8) for _ in range(32)], [(1.0, 1.0)] * 32)
full = ([(1440, 808)] * 32, labels, (832, 1440), None)
extra = (False,) if "fuse" in inspect.signature(g._host_batch).parameters else ()
t = [g._host_batch(k + 100, full, tiny, hyp, *extra) for k in range(int(sys.argv[2]) + 1)][1:]
print(json.dumps({"median_ms": round(statistics.median(t), 2), "min_ms": round(min(t), 2), "load": round(os.getloadavg()[0], 2)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+", help="source trees (checkouts) to compare")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=30)
    args = ap.parse_args()
    for r in range(args.rounds):
        for tree in args.trees:
            root = str(Path(tree).resolve())
            out = subprocess.run([sys.executable, "-c", _CHILD, root, str(args.batches)], capture_output=True, text=True, check=True)
            print(json.dumps({"round": r, "tree": root, **json.loads(out.stdout.strip().splitlines()[-1])}))


if __name__ == "__main__":
    main()
