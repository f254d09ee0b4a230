"""Accuracy parity with error bars: the same model, data, epochs and hyperparameters trained with
Ultralytics' own dataloader and with sainet loaders, paired by seed (issues 14, 22).

    python benchmarks/accuracy_parity.py --json benchmarks/results/cpu/accuracy_parity.json

Paired seeds: seed s gives every loader the same initial weights (Ultralytics seeds torch before it
builds the model; each run records a digest of the weights it starts from, `init_digest`, and the
summary says whether they agree) and the same val set (one synthetic dataset per `--work`, made from
fixed seeds; its digest is part of each run's `config`). Every run's final weights are then scored
by one validator (`common_val`: Ultralytics' own ``YOLO.val`` on the source folder, rect val batches):
each trainer validates with its own loader, and the same weights score ~0.01 mAP50 higher through
sainet's square letterbox than through Ultralytics' rectangular val batches. The summary of each
sainet group holds the mean over seeds of (sainet - Ultralytics) mAP50 by that validator
(`paired_metric` "mAP50_val"; "mAP50_final", each trainer's own, where a row lacks it) with the same
seed, its 95 % confidence interval (Student t over the paired differences) and the seeds paired:
`paired_mean_diff`, `paired_ci95` [low, high], `seeds`. Target (issue 22): |mean| <= 0.01 and the
interval inside +-0.02. Rows recorded before the common validator get it with `--runs-dir` (the
folder of their run folders).

Defaults (the protocol of issue 22: 22 runs of ~7 min, about 2.5 hours on 2 idle CPU cores at ~23 s
per training epoch of 300 images at imgsz 256, batch 16): 500 synthetic 640x360 images (300 train, 200 val), `yolov8n.yaml`
from scratch, 16 epochs of which the last 2 without mosaic (`close_mosaic` 2), the val split
evaluated after the final epoch, imgsz 256, batch 16, Ultralytics' default hyperparameters
otherwise, and

- loaders ultralytics and lmdb with seeds 0-5, dali (CPU mode) with seeds 0-2 (`--dali-seeds`);
- batch 32 (a 2xA100 rank's batch): ultralytics and lmdb, seeds 0-2 (`--extra-batch`, `--extra-seeds`);
- rectangular training (imgsz 256x144 -> 256x160) against square 256 at equal wall-clock time:
  sainet lmdb, seeds 0-2 (`--rect-seeds`), each pair back to back, both given the same time
  (`--rect-hours`, Ultralytics `time`, which sets the epochs from the first epoch's pace); the
  machine must be otherwise idle, so each row records the 1-minute load average before and after.

The runs can be split over invocations (several machines or sessions): give each its own `--work`
and a subset (`--loaders`, `--seeds`), then summarize with `--reuse A/runs.jsonl --reuse
B/runs.jsonl`, which trains only what no file holds (a run is reused only when its `config` — data,
epochs, model and the other settings that change a result — matches). A group whose seeds were
extended after a look at its result gets `--looks GROUP=K` (its interval also at 1 - 0.05/K), a
group's rows from before a change `--before GROUP=FILE`, `--versus GROUP OTHER` pairs two groups of
the --reuse files with each other (a setting's own effect), and `--command` appends how the rows were
made to the `commands` the --json file keeps. `--smoke` runs a tiny
configuration (a couple of minutes) that only checks the script end to end. Never in `make test`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache_tools import PackOptions, pack
from sainet.core.geometry import parse_imgsz, parse_wxh
from sainet.synth import synthesize
from sainet.train import TrainRequest, train

METRICS = ("mAP50_best", "mAP50_final", "mAP50-95_best", "mAP50-95_final")


@dataclass(frozen=True)
class Run:
    group: str  # rows of one group are the seeds of one configuration
    loader: str
    seed: int
    batch: int
    imgsz: str
    hours: float | None = None  # Ultralytics `time`: train for this long instead of `epochs`
    order: str = "own"  # "sainet": Ultralytics' loader fed sainet's epoch order (--same-order)
    resample: str = "fast"  # a sainet loader's train resampling (--resample; `loaders.decode.RESAMPLE`)

#: a row recorded before a `Run` field existed has that field's default
_RUN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Run) if f.default is not dataclasses.MISSING}


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom (the 95 % interval's)."""
    return t_quantile(0.975, df)


@functools.cache
def t_quantile(p: float, df: int) -> float:
    """The `p` quantile (p > 0.5) of Student's t with `df` degrees of freedom, by bisection on its CDF
    (Simpson's rule over the density; within 1e-4 of the tables): the intervals of several looks."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float, n: int = 2000) -> float:
        h = x / n
        f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 100.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--val-fraction", type=float, default=0.4, help="the val split (>= 200 images by default)")
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--close-mosaic", type=int, default=2,
                    help="epochs at the end without mosaic (Ultralytics' default 10 would switch mosaic off for the whole of a "
                         "short run, and sainet's same-batch mosaic would go untested)")
    ap.add_argument("--val-each-epoch", action="store_true", help="validate every epoch (default: the final epoch only)")
    ap.add_argument("--imgsz", default="256")
    ap.add_argument("--rect-imgsz", default="256x144", help="the rectangular shape of the equal-wall-clock row ('' skips it)")
    ap.add_argument("--same-order", action="store_true",
                    help="feed Ultralytics' loader sainet's epoch order (common random numbers: pairs that differ "
                         "in the loader's augmentation, not in which images each step sees; its runs are a group of their own)")
    ap.add_argument("--resample", default="fast", choices=("fast", "ultralytics"),
                    help="the sainet loaders' train resampling (`sainet train --resample`); not 'fast': groups of their own")
    ap.add_argument("--rect-seeds", type=int, default=3, help="seeds 0..N-1 of the equal-time rect/square pairs")
    ap.add_argument("--rect-hours", type=float, default=0.06, help="each run of an equal-time pair trains this long")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--extra-batch", type=int, default=32, help="a second batch size, for ultralytics and lmdb (0 skips it)")
    ap.add_argument("--extra-seeds", type=int, default=3, help="seeds 0..N-1 of the --extra-batch groups")
    ap.add_argument("--model", default="yolov8n.yaml")
    ap.add_argument("--loaders", default="ultralytics,lmdb,dali",
                    help="loaders to train; a sainet loader may name its resample mode, LOADER:MODE (lmdb:ultralytics), "
                         "which overrides --resample for that entry (one loader in both modes: lmdb,lmdb:ultralytics)")
    ap.add_argument("--seeds", default="0,1,2,3,4,5", help="seeds of every loader but dali (a list, or N for 0..N-1)")
    ap.add_argument("--dali-seeds", type=int, default=3, help="dali (CPU mode) trains the first N of --seeds")
    ap.add_argument("--lmdb-seeds", type=int, default=None,
                    help="lmdb trains the first N of --seeds (default all: a summary can pair dali on more seeds than lmdb)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sainet-parity"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--reuse", type=Path, action="append", default=[],
                    help="runs.jsonl (or a results .json) of an earlier invocation with the same data and settings: a "
                         "run found there is not trained again (read before each run, so another invocation may "
                         "still be adding to it)")
    ap.add_argument("--runs-dir", type=Path, action="append", default=[],
                    help="a folder of run folders (an earlier --work's runs/): reused rows without the common-validator "
                         "metrics are validated from the weights found there (repeatable)")
    ap.add_argument("--looks", action="append", default=[], metavar="GROUP=K",
                    help="GROUP's result was looked at K times as seeds were added: also give its interval at 1 - 0.05/K (repeatable)")
    ap.add_argument("--before", action="append", default=[], metavar="GROUP=FILE",
                    help="GROUP's rows from before a change (a runs.jsonl): paired with the reference and with the rows now (repeatable)")
    ap.add_argument("--versus", action="append", nargs=2, default=[], metavar=("GROUP", "OTHER"),
                    help="also pair GROUP with OTHER, a group whose rows are in the --reuse files (GROUP - OTHER by "
                         "seed: a setting's own effect, e.g. resample=ultralytics against fast; repeatable)")
    ap.add_argument("--command", action="append", default=[], metavar="TEXT",
                    help="how this invocation's rows were made (the commands, commit, times), appended to the `commands` "
                         "that --json's file already holds (repeatable)")
    ap.add_argument("--summary-only", action="store_true",
                    help="train nothing: stop, naming them, if any planned run is in no --reuse file")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, measures nothing")
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.val_fraction, args.size, args.epochs, args.imgsz = 24, 0.5, "160x96", 2, "64"
        args.close_mosaic = 1
        args.rect_imgsz, args.batch, args.extra_batch, args.seeds, args.dali_seeds, args.extra_seeds = "64x32", 4, 2, "0,1", 2, 2
        args.rect_seeds, args.rect_hours = 2, 0.004
    return args


def seeds_of(spec: str) -> list[int]:
    """``"0,1,4"`` or ``"6"`` (seeds 0..5)."""
    return [int(x) for x in spec.split(",")] if "," in spec else list(range(int(spec)))


def plan_runs(args: argparse.Namespace) -> list[Run]:
    seeds = seeds_of(args.seeds)
    entries = loader_entries(args)

    def run(ld: str, mode: str, s: int, batch: int) -> Run:
        if ld == "ultralytics" and args.same_order:
            return Run(f"{ld} b{batch} (sainet order)", ld, s, batch, args.imgsz, order="sainet")
        if ld != "ultralytics" and mode != "fast":  # a group of its own
            return Run(f"{ld} b{batch} resample={mode}", ld, s, batch, args.imgsz, resample=mode)
        return Run(f"{ld} b{batch}", ld, s, batch, args.imgsz)

    # Seed-major: a seed's runs follow each other, so an invocation cut short leaves whole pairs.
    first = {"dali": args.dali_seeds, "lmdb": len(seeds) if args.lmdb_seeds is None else args.lmdb_seeds}
    runs = [run(ld, m, s, args.batch) for s in seeds for ld, m in entries if s in seeds[: first.get(ld, len(seeds))]]
    if args.extra_batch:
        runs += [run(ld, m, s, args.extra_batch) for s in seeds[: args.extra_seeds] for ld, m in entries
                 if ld in ("ultralytics", "lmdb") and (ld, m) == (ld, args.resample)]
    return runs


def loader_entries(args: argparse.Namespace) -> list[tuple[str, str]]:
    """--loaders as (loader, resample mode) pairs: LOADER takes --resample, LOADER:MODE its own."""
    out = []
    for item in args.loaders.split(","):
        ld, _, mode = item.partition(":")
        if mode not in ("", "fast", "ultralytics") or (mode and ld == "ultralytics"):
            raise SystemExit(f"--loaders {item!r}: a sainet loader's resample mode is fast or ultralytics "
                             "(Ultralytics' own loader has its own)")
        out.append((ld, "fast" if ld == "ultralytics" else mode or args.resample))
    return out


def rect_runs(args: argparse.Namespace) -> list[Run]:
    """The equal-time pairs (square, then rectangular, back to back: both see the same machine)."""
    if not args.rect_imgsz or ("lmdb", args.resample) not in loader_entries(args):
        return []
    return [Run(group, "lmdb", seed, args.batch, imgsz, hours=args.rect_hours)
            for seed in seeds_of(args.seeds)[: args.rect_seeds]
            for group, imgsz in ((f"lmdb b{args.batch} square {args.imgsz} (equal-time pair)", args.imgsz),
                                 (f"lmdb b{args.batch} rect {args.rect_imgsz} (equal time)", args.rect_imgsz))]


def config(args: argparse.Namespace) -> str:
    """What a run's result depends on besides its `Run` fields: the data (a digest of the synthetic
    dataset) and the training settings. --reuse takes a row only when this matches."""
    files = sorted((args.work / "src").rglob("*"))
    h = hashlib.sha1()
    for f in files:
        if f.is_file() and f.suffix not in (".cache", ".yaml"):  # data.yaml names the folder, which may differ
            h.update(f.relative_to(args.work).as_posix().encode() + hashlib.sha1(f.read_bytes()).digest())
    keys = ("images", "val_fraction", "size", "epochs", "close_mosaic", "val_each_epoch", "model")
    return h.hexdigest()[:12] + ":" + ",".join(f"{k}={getattr(args, k)}" for k in keys)


def _rows_of(path: Path) -> list[dict]:
    """The runs of a --reuse file: a runs.jsonl (a row per line) or a results JSON (its "runs")."""
    if not path.is_file():
        return []
    text = path.read_text()
    if path.suffix == ".json":
        return list(json.loads(text).get("runs", []))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _same_run(a: dict, b: dict) -> bool:
    """Two rows of one (group, seed) are copies of one training (a reused row is written again by the
    invocation that reused it), not two trainings: same start, same length, same result."""
    keys = ("init_digest", "wall_s", "mAP50_final")
    return all(a.get(k) == b.get(k) for k in keys)


def _reused(args: argparse.Namespace, run: Run, quiet: bool = False) -> dict | None:
    """The row of `run` in the --reuse files, if one has it. Two different trainings of the same run
    (a group trained again after a change, its old rows still in a file) stop the script, naming both
    files: which one counts is the user's decision, never the order of --reuse."""
    found: list[tuple[Path, dict]] = []
    for path in args.reuse:
        for r in _rows_of(path):
            if (all(r.get(k, _RUN_DEFAULTS.get(k)) == v for k, v in run.__dict__.items() if k != "hours")
                    and (run.hours is None) == (r.get("hours") is None)
                    and r.get("config") == args.config):
                found.append((path, r))
    if not found:
        return None
    path, r = found[0]
    other = next(((p, o) for p, o in found[1:] if not _same_run(r, o)), None)
    if other is not None:
        raise SystemExit(f"{run_name(run)}: two different trainings in the --reuse files ({path}: wall_s "
                         f"{r.get('wall_s')}, mAP50 {r.get('mAP50_final')}; {other[0]}: wall_s {other[1].get('wall_s')}, "
                         f"mAP50 {other[1].get('mAP50_final')}); remove the one that does not count")
    if not quiet:
        print(f"reused from {path}: {json.dumps(r)}", flush=True)
    return r


def run_name(run: Run) -> str:
    return f"{run.group.replace(' ', '-')}-s{run.seed}"


def common_val(args: argparse.Namespace, weights: Path, imgsz: str) -> dict:
    """mAP of `weights` by one validator for every loader: Ultralytics' own (``YOLO.val``, rect val
    batches as its trainer builds them) on the source folder's val split at the run's long side.
    Each trainer validates with its own loader (Ultralytics': rectangular batches; sainet's: square
    letterbox), and the same weights score differently under the two (square ~0.01 mAP50 higher
    here), so pairs are compared on this one."""
    from ultralytics import YOLO

    size = max(parse_imgsz(imgsz))
    m = YOLO(str(weights)).val(data=str(args.work / "src" / "data.yaml"), imgsz=size, batch=16, rect=True, device="cpu",
                               workers=0, plots=False, verbose=False, project=str(args.work / "val"), name="val",
                               exist_ok=True)
    return {"mAP50_val": float(m.box.map50), "mAP50-95_val": float(m.box.map), "val": f"ultralytics rect imgsz {size}"}


def _with_common_val(args: argparse.Namespace, run: Run, row: dict) -> dict:
    """`row` with the common validator's metrics: kept if it has them, else from its weights
    (its own `weights`, or RUNS_DIR/<run>/weights/last.pt of a --runs-dir)."""
    if "mAP50_val" in row:
        return row
    found = [Path(row["weights"])] if row.get("weights") else []
    found += [d / run_name(run) / "weights" / "last.pt" for d in args.runs_dir]
    weights = next((w for w in found if w.is_file()), None)
    if weights is None:
        return row
    print(f"common validator: {weights}", flush=True)
    return {**row, **common_val(args, weights, run.imgsz)}


def train_one(args: argparse.Namespace, run: Run) -> dict:
    reused = _reused(args, run)
    if reused is not None:
        return _with_common_val(args, run, reused)
    sets = {"seed": run.seed, "deterministic": True, "val": args.val_each_epoch, "close_mosaic": args.close_mosaic}
    if run.hours is not None:
        sets["time"] = run.hours
    init: list[str] = []
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    with _sainet_order(args, run):
        r = _train(args, run, sets, init)
    wall = time.perf_counter() - t
    with open(r.save_dir / "results.csv", newline="") as f:
        epochs = [{k.strip(): v for k, v in e.items()} for e in csv.DictReader(f)]
    col = lambda key: [float(e.get(key) or 0) for e in epochs] or [0.0]  # noqa: E731
    row = {**run.__dict__, "config": args.config, "commit": _commit(), "init_digest": init[0] if init else None,
           "weights": str(r.last), "wall_s": round(wall, 1), "epochs_done": len(epochs),
           "load_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
           "mAP50_final": col("metrics/mAP50(B)")[-1], "mAP50_best": max(col("metrics/mAP50(B)")),
           "mAP50-95_final": col("metrics/mAP50-95(B)")[-1], "mAP50-95_best": max(col("metrics/mAP50-95(B)"))}
    row = _with_common_val(args, run, row)
    print(json.dumps(row), flush=True)
    return row


def _train(args: argparse.Namespace, run: Run, sets: dict, init: list[str]):  # noqa: ANN202 - a TrainResult
    return train(TrainRequest(data=str(args.work / "store"), loader=run.loader, model=args.model, imgsz=run.imgsz,
                              epochs=args.epochs, batch=run.batch, device="cpu", profile="cpu", project=str(args.work / "runs"),
                              name=run_name(run), sets=sets, resample=run.resample,
                              callbacks={"on_pretrain_routine_end": [lambda tr: init.append(weights_digest(tr.model))]}))


@contextlib.contextmanager
def _sainet_order(args: argparse.Namespace, run: Run) -> Iterator[None]:
    """For a run with ``order="sainet"``: Ultralytics' train loader draws its epochs in sainet's order
    (`loaders.sampler.ShardedSampler`: ``default_rng([seed, epoch]).permutation``, the store's train
    split matched to Ultralytics' image files by name), in-process (workers 0, so an epoch's pass starts
    only when its first batch is asked for, also after close_mosaic's reset). Its augmentation, mosaic
    buffer and collate stay Ultralytics'. Benchmark-only: rebinds the name the detection trainer calls."""
    if run.order != "sainet":
        yield
        return
    import torch
    from ultralytics.data.build import InfiniteDataLoader, seed_worker
    from ultralytics.models.yolo.detect import train as ul_train

    from cache_tools import open_store
    from loaders.sampler import ShardedSampler
    from loaders.sources import StoreSource

    names = list(StoreSource(open_store(args.work / "store"), "train").names)

    class SainetOrder(torch.utils.data.Sampler):
        def __init__(self, im_files: list[str]) -> None:
            at = {Path(f).name: i for i, f in enumerate(im_files)}
            missing = [n for n in names if n not in at]
            if missing or len(at) != len(names):
                raise SystemExit(f"--same-order: {len(missing)} store names not among Ultralytics' {len(at)} train files")
            self.map, self.epoch = np.array([at[n] for n in names]), 0

        def __len__(self) -> int:
            return len(self.map)

        def __iter__(self):  # noqa: ANN204
            perm = ShardedSampler(len(self.map), seed=run.seed).permutation(self.epoch)
            self.epoch += 1
            return iter(self.map[perm].tolist())

    real = ul_train.build_dataloader

    def build(dataset, batch, workers, shuffle=True, rank=-1, drop_last=False, pin_memory=True, device="cuda"):  # noqa: ANN001, ANN202
        if not shuffle or rank != -1:
            return real(dataset, batch, workers, shuffle, rank, drop_last, pin_memory, device)
        return InfiniteDataLoader(dataset=dataset, batch_size=min(batch, len(dataset)), shuffle=False, num_workers=0,
                                  sampler=SainetOrder(dataset.im_files), collate_fn=getattr(dataset, "collate_fn", None),
                                  worker_init_fn=seed_worker, drop_last=drop_last)

    ul_train.build_dataloader = build
    try:
        yield
    finally:
        ul_train.build_dataloader = real


def weights_digest(model: object) -> str:
    """A digest of a model's parameters and buffers (the weights a run starts from)."""
    m = getattr(model, "module", model)
    h = hashlib.sha1()
    for name, t in sorted(m.state_dict().items()):  # type: ignore[attr-defined]
        h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def paired(rows: list[dict], ref_rows: list[dict], metric: str = "mAP50_final") -> dict:
    """Mean over the seeds both groups trained of (row - reference) `metric`, its 95 % t interval,
    the seeds paired, and whether each pair started from the same weights."""
    for rs in (rows, ref_rows):
        seeds = [r["seed"] for r in rs]
        if len(set(seeds)) != len(seeds):
            dup = sorted({s for s in seeds if seeds.count(s) > 1})
            raise ValueError(f"{rs[0].get('group')}: seeds {dup} appear twice; a pair needs one row per seed")
    ref = {r["seed"]: r for r in ref_rows}
    pairs = [(r, ref[r["seed"]]) for r in sorted(rows, key=lambda r: r["seed"]) if r["seed"] in ref]
    diffs = [float(a[metric]) - float(b[metric]) for a, b in pairs]
    out: dict = {"paired_seeds": [a["seed"] for a, _ in pairs], "paired_diffs": diffs}
    if not diffs:
        return out
    mean = statistics.fmean(diffs)
    half = t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
    out |= {"paired_mean_diff": mean, "paired_ci95": [mean - half, mean + half],
            "same_init": all(a.get("init_digest") is not None and a.get("init_digest") == b.get("init_digest") for a, b in pairs)}
    return out


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(rows: list[dict], looks: dict[str, int] | None = None, before: dict[str, list[dict]] | None = None,
              versus: dict[str, tuple[str, list[dict]]] | None = None) -> list[dict]:
    """mean +- sd per group; for sainet groups, against the Ultralytics group of the same batch and
    shape: the seed-paired difference of mAP50 (final epoch) with its 95 % interval (`paired`), and
    the unpaired difference of means with two standard errors of it.

    `looks` (group -> K): the group's result was looked at K times as its seeds grew, so it also gets
    the interval at 1 - 0.05 / K (Bonferroni over the looks), `paired_ci_looks`, and `parity_looks`
    judged on it. `before` (group -> rows): the same group's rows from before a change, paired with
    the reference and with this group (`before`: the change's effect, after - before). `versus`
    (group -> (other group, its rows)): this group - the other, paired by seed (`versus`)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for name, rs in groups.items():
        g = {"group": name, "loader": rs[0]["loader"], "batch": rs[0]["batch"], "imgsz": rs[0]["imgsz"],
             "order": rs[0].get("order", Run.order),
             "seeds": sorted(r["seed"] for r in rs)}
        for k in (*METRICS, "wall_s", "epochs_done"):
            g[k] = _mean_sd([float(r[k]) for r in rs])
        if all("mAP50_val" in r for r in rs):
            g["mAP50_val"] = _mean_sd([float(r["mAP50_val"]) for r in rs])
        g["_rows"] = rs
        out.append(g)
    pair = next((u for u in out if u["group"].endswith("(equal-time pair)")), None)
    for g in out:
        refs = [u for u in out if u["loader"] == "ultralytics" and u["batch"] == g["batch"] and u["imgsz"] == g["imgsz"]]
        ref = max(refs, key=lambda u: u["order"] == "sainet", default=None)  # paired by order where there is such a group
        if g["group"].endswith("(equal time)"):
            ref = pair  # rectangular vs square sainet at equal wall-clock time (Ultralytics cannot train this shape)
        if ref is None or ref is g or g is pair:  # the square half of a pair trained for a time, not Ultralytics' epochs
            continue
        # one validator for both (see common_val) where every row has it; else each trainer's own
        metric = "mAP50_val" if "mAP50_val" in g and "mAP50_val" in ref else "mAP50_final"
        (m1, s1), (m0, s0) = g[metric], ref[metric]
        diff, se2 = m1 - m0, 2 * math.sqrt(s1**2 / len(g["seeds"]) + s0**2 / len(ref["seeds"]))
        g["mAP50_vs_ultralytics"], g["two_se"], g["paired_metric"] = diff, se2, metric
        g |= paired(g["_rows"], ref["_rows"], metric)
        if metric != "mAP50_final":  # what the trainers' own validators said, for comparison
            g["paired_own_val"] = {k: v for k, v in paired(g["_rows"], ref["_rows"]).items() if k in ("paired_mean_diff", "paired_ci95")}
        ci = g.get("paired_ci95")
        g["parity"] = (abs(g["paired_mean_diff"]) <= 0.01 and -0.02 <= ci[0] and ci[1] <= 0.02) if ci and ref is not pair else None
        g["reference"] = ref["group"]
        g["speedup_vs_ultralytics"] = ref["wall_s"][0] / g["wall_s"][0]
        _looks_and_before(g, ref, metric, (looks or {}).get(g["group"]), (before or {}).get(g["group"]))
    for g in out:
        if g["group"] in (versus or {}):
            other, other_rows = versus[g["group"]]  # type: ignore[index]
            metric = g.get("paired_metric", "mAP50_final")
            v = paired(g["_rows"], other_rows, metric)
            g["versus"] = {"group": other, "metric": metric, **{k: v.get(k) for k in ("paired_seeds", "paired_mean_diff", "paired_ci95")}}
    for g in out:
        g.pop("_rows")
    return out


def _looks_and_before(g: dict, ref: dict, metric: str, k: int | None, earlier: list[dict] | None) -> None:
    """`summarize`'s `looks` and `before` for group `g` paired with `ref` by `metric`."""
    diffs = g.get("paired_diffs") or []
    if k and len(diffs) > 1:
        mean, conf = statistics.fmean(diffs), 1 - 0.05 / k
        half = t_quantile(1 - (1 - conf) / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
        g["paired_ci_looks"] = {"looks": k, "confidence": conf, "interval": [mean - half, mean + half]}
        g["parity_looks"] = abs(mean) <= 0.01 and -0.02 <= mean - half and mean + half <= 0.02
    if earlier:
        b = paired(earlier, ref["_rows"], metric)
        change = paired(g["_rows"], earlier, metric)
        g["before"] = {"seeds": b["paired_seeds"], "paired_mean_diff": b.get("paired_mean_diff"), "paired_ci95": b.get("paired_ci95"),
                       "after_minus_before": {k2: change.get(k2) for k2 in ("paired_seeds", "paired_mean_diff", "paired_ci95")}}


def print_table(summary: list[dict]) -> None:
    pm = lambda v: f"{v[0]:.4f} ± {v[1]:.4f}"  # noqa: E731
    print("| group | imgsz | seeds | mAP50 final (own val) | mAP50 (common val) | mAP50-95 final | wall s | "
          "mAP50 − Ultralytics, paired by seed [95 % CI] | same init | parity | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for g in summary:
        d = "–"
        if "paired_mean_diff" in g:
            lo, hi = g["paired_ci95"]
            d = f"{g['paired_mean_diff']:+.4f} [{lo:+.4f}, {hi:+.4f}] ({len(g['paired_seeds'])} pairs"
            d += ", common val)" if g.get("paired_metric") == "mAP50_val" else ", own val)"
            if g.get("reference", "").endswith("(equal-time pair)"):
                d += " vs square"
            if "paired_ci_looks" in g:
                lk = g["paired_ci_looks"]
                d += f"; {100 * lk['confidence']:.1f} % for {lk['looks']} looks [{lk['interval'][0]:+.4f}, {lk['interval'][1]:+.4f}]"
        init = ("yes" if g["same_init"] else "no") if "same_init" in g else "–"
        ok = ("yes" if g["parity"] else "no") if g.get("parity") is not None else "–"
        sp = f"{g['speedup_vs_ultralytics']:.2f}×" if "speedup_vs_ultralytics" in g else "–"
        common = pm(g["mAP50_val"]) if "mAP50_val" in g else "–"
        print(f"| {g['group']} | {g['imgsz']} | {len(g['seeds'])} | {pm(g['mAP50_final'])} | {common} | "
              f"{pm(g['mAP50-95_final'])} | {g['wall_s'][0]:.0f} ± {g['wall_s'][1]:.0f} | {d} | "
              f"{init} | {ok} | {sp} |")
    for g in summary:
        if g.get("versus", {}).get("paired_ci95"):
            v = g["versus"]
            print(f"\n{g['group']} − {v['group']}, paired by seed ({v['metric']}): {v['paired_mean_diff']:+.4f} "
                  f"[{v['paired_ci95'][0]:+.4f}, {v['paired_ci95'][1]:+.4f}] ({len(v['paired_seeds'])} pairs)")


def _commands(path: Path) -> list[str]:
    """The `commands` of the results file about to be rewritten: how its rows were made, kept."""
    try:
        return list(json.loads(path.read_text()).get("commands") or [])
    except (OSError, ValueError):
        return []


def looks_of(items: list[str]) -> dict[str, int]:
    """``["lmdb b16=2"]`` -> ``{"lmdb b16": 2}``."""
    out = {}
    for item in items:
        group, _, k = item.rpartition("=")
        out[group] = int(k)
    return out


def before_of(items: list[str], config: str | None = None) -> dict[str, list[dict]]:
    """``["lmdb b16=rows.jsonl"]`` -> that group's rows from the file (of `config`'s data and settings
    when given: a row of other data would pair nothing it should)."""
    out: dict[str, list[dict]] = {}
    for item in items:
        group, _, path = item.rpartition("=")  # a group's name may hold "=" (resample=ultralytics)
        if not Path(path).is_file():
            raise FileNotFoundError(path)
        rows = [r for r in _rows_of(Path(path)) if r.get("group") == group]
        other = [r["seed"] for r in rows if config is not None and r.get("config") != config]
        if other:
            raise SystemExit(f"--before {item}: seeds {other} were trained on other data or settings than {config}")
        out[group] = rows
    return out


def versus_of(args: argparse.Namespace) -> dict[str, tuple[str, list[dict]]]:
    """--versus's pairs: GROUP -> (OTHER, OTHER's rows in the --reuse files, of this data and these
    settings, one per seed; two different trainings of one seed stop the script, as in `_reused`)."""
    out: dict[str, tuple[str, list[dict]]] = {}
    for group, other in args.versus:
        by_seed: dict[int, tuple[Path, dict]] = {}
        for path in args.reuse:
            for r in _rows_of(path):
                if r.get("group") != other or r.get("config") != args.config:
                    continue
                seen = by_seed.setdefault(r["seed"], (path, r))
                if not _same_run(seen[1], r):
                    raise SystemExit(f"--versus {other!r}: seed {r['seed']} trained twice ({seen[0]}, {path}); "
                                     "remove the one that does not count")
        if not by_seed:
            raise SystemExit(f"--versus {other!r}: no rows of that group (and these data and settings) in the --reuse files")
        out[group] = (other, [r for _, r in sorted(by_seed.values(), key=lambda pr: pr[1]["seed"])])
    return out


def _commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                       cwd=Path(__file__).parent, check=False)
    return r.stdout.strip() or "unknown"


def _save_partial(args: argparse.Namespace, rows: list[dict]) -> None:
    """Each finished run is kept in WORK/runs.jsonl, so a crash two hours in loses one run, not all."""
    with open(args.work / "runs.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> None:
    import torch
    import ultralytics

    args = parse_args(argv)
    w, h = parse_wxh(args.size)
    if args.work.exists():
        shutil.rmtree(args.work)
    synthesize(args.work / "src", images=args.images, size=(w, h), seed=0, val_fraction=args.val_fraction)
    pack(args.work / "src", args.work / "store", PackOptions(container="lmdb"))
    args.config = config(args)
    planned = plan_runs(args) + rect_runs(args)
    missing = [run_name(r) for r in planned if _reused(args, r, quiet=True) is None]
    print(f"{len(planned)} runs planned, {len(planned) - len(missing)} in the --reuse files, {len(missing)} to train", flush=True)
    if args.summary_only and missing:
        raise SystemExit(f"--summary-only: no --reuse file holds {len(missing)} planned run(s): {', '.join(missing)}")
    rows = []
    for run in planned:
        rows.append(train_one(args, run))
        _save_partial(args, rows)
    summary = summarize(rows, looks_of(args.looks), before_of(args.before, args.config), versus_of(args))
    doc = {"host": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
           "ultralytics": ultralytics.__version__, "torch": torch.__version__, "commit": _commit(),
           "settings": json.loads(json.dumps(vars(args), default=str)),  # paths (and --reuse's list of them) as text
           "runs": rows, "summary": summary}
    if args.json:
        doc["commands"] = _commands(args.json) + args.command
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
    print_table(summary)


if __name__ == "__main__":
    main()
