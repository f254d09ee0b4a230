"""`sainet demo`: the product's main job end to end on embedded synthetic data, small enough for a laptop.

synthesize an easy set -> check -> pack (shards into /dev/shm, LMDB beside it) -> verify ->
bench-loader -> train long enough that the detector visibly learns. `DEMO` holds every setting;
tests/test_demo.py trains with the same constant and checks `DEMO.map50_threshold`.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sainet.core.geometry import format_imgsz

__all__ = ["DemoSettings", "DEMO", "DemoReport", "run_demo", "demo_train_settings", "store_root", "read_losses"]

log = logging.getLogger(__name__)
Progress = Callable[[str, int | None], Callable[[int], None]]


@dataclass(frozen=True)
class DemoSettings:
    """An easy synthetic set and a training run that learns it within ~3 minutes on 2 CPU cores."""

    images: int = 400
    size: tuple[int, int] = (256, 144)  # (W, H) of the synthetic frames: small, so many can be seen in 3 minutes
    classes: tuple[str, ...] = ("fire", "smoke")
    background: float = 0.1
    val_fraction: float = 0.1
    seed: int = 0
    model: str = "yolov8n.yaml"
    imgsz: tuple[int, int] = (160, 256)  # (H, W) training shape: the frames, padded to stride 32
    epochs: int = 8
    batch: int = 16
    loader: str = "shm"
    #: Ultralytics arguments on top of its defaults. No mosaic and a milder scale jitter: at this small
    #: shape mosaic halves every object (fires become 2-3 px) and nothing is learned in 8 epochs.
    #: Validation after every epoch, so every point of results.png and the summary is measured (with
    #: val=False Ultralytics plots 0 for the epochs it did not validate); fixed seed.
    hyp: MappingProxyType = field(default_factory=lambda: MappingProxyType(
        {"mosaic": 0.0, "close_mosaic": 0, "scale": 0.25, "seed": 0, "deterministic": True}))
    bench_loaders: tuple[str, ...] = ("shm", "lmdb", "dali", "ultralytics")
    bench_seconds: float = 2.0
    #: mAP50 on the val split after `epochs` epochs must exceed this (seed 0). Measured with these
    #: settings: 0.65 (two classes, after 8 epochs); see README.md, "The demo".
    map50_threshold: float = 0.3


DEMO = DemoSettings()


@dataclass
class DemoReport:
    steps: list[tuple[str, str]] = field(default_factory=list)
    store: Path | None = None
    bench: list[Any] = field(default_factory=list)  # bench.BenchResult
    bench_config: Any = None
    bench_profile: str = ""
    bench_saved: Path | None = None
    train: Any = None  # train.TrainResult
    results_png: Path | None = None
    seconds: float = 0.0
    next_steps: list[str] = field(default_factory=list)  # commands to try next, in order


def store_root(need_bytes: int, shm: Path = Path("/dev/shm")) -> tuple[Path | None, str]:
    """/dev/shm when it exists and has room for `need_bytes` (and the host RAM for it), else None and why."""
    from cache_tools.plan import fs_info

    if not shm.is_dir() or not os.access(shm, os.W_OK):
        return None, f"no writable {shm} on this host"
    fs = fs_info(shm)
    if not fs.in_memory:
        return None, f"{shm} is not a tmpfs here ({fs.fstype})"
    if fs.usable < need_bytes:
        return None, f"{shm} has room for {fs.usable / 1e6:.0f} MB, the demo store needs {need_bytes / 1e6:.0f} MB"
    return shm, f"packing into {shm} (tmpfs)"


def demo_train_settings(store: Path, project: Path, demo: DemoSettings = DEMO) -> Any:
    from sainet.settings import TrainSettings

    return TrainSettings(data=str(store), loader=demo.loader, model=demo.model, imgsz=demo.imgsz, epochs=demo.epochs,
                         batch=demo.batch, device="cpu", profile="cpu", project=str(project), name="demo",
                         sets={**demo.hyp, "exist_ok": True, "plots": True})


def read_losses(results_csv: Path) -> list[tuple[float, float]]:
    """(train loss = box + cls + dfl, val mAP50) per epoch, from Ultralytics' results.csv.

    Only validated epochs: a row whose val losses are all 0 was not validated (Ultralytics writes 0 for
    the metrics of an epoch it skipped), so its mAP50 is no measurement and the row is left out."""
    rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(results_csv.open())]
    measured = [r for r in rows if any(float(r.get(f"val/{k}_loss", 0) or 0) > 0 for k in ("box", "cls", "dfl"))]
    return [(sum(float(r[f"train/{k}_loss"]) for k in ("box", "cls", "dfl")), float(r["metrics/mAP50(B)"]))
            for r in measured]


def _synth_and_check(out: Path, demo: DemoSettings, report: DemoReport, progress: Progress | None) -> Path:
    from sainet.core.check import check_dataset
    from sainet.core.datasets import open_dataset
    from sainet.core.errors import DatasetError
    from sainet.synth import synthesize

    src = out / "synth"
    if src.exists():
        shutil.rmtree(src)
    t0 = time.perf_counter()
    result = synthesize(src, images=demo.images, size=demo.size, classes=list(demo.classes), background=demo.background,
                        val_fraction=demo.val_fraction, seed=demo.seed, progress=progress("synth", demo.images) if progress else None)
    mb = sum(len(r.jpeg) for r in result) / 1e6
    report.steps.append(("synth", f"{len(result)} images {demo.size[0]}x{demo.size[1]}, {mb:.1f} MB JPEG in "
                                  f"{time.perf_counter() - t0:.1f}s -> {src}"))
    checked = check_dataset(open_dataset(src), progress=progress("check", demo.images) if progress else None)
    reason = checked.unusable_reason()
    report.steps.append(("check", f"{checked.images} images, {checked.boxes} boxes, {len(checked.problems)} problems, "
                                  + (f"NOT usable: {reason}" if reason else "usable")))
    if reason:
        raise DatasetError(f"the demo's synthetic set is not usable: {reason}")
    return src


def _pack_and_verify(src: Path, out: Path, shm_name: str, demo: DemoSettings, report: DemoReport,
                     progress: Progress | None) -> dict[str, Path]:
    from cache_tools import PackOptions, pack, verify_store
    from cache_tools.plan import human_bytes

    need = 2 * sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) + (16 << 20)
    root, why = store_root(need)
    report.steps.append(("store", why if root else f"{why}: packing into {out / 'stores'} instead"))
    stores = {"shards": (root or out / "stores") / shm_name, "lmdb": out / "stores" / "demo-lmdb"}
    for container, target in stores.items():
        bar = progress(f"pack {container}", demo.images) if progress else None
        r = pack(src, target, PackOptions(container=container, force=True), progress=bar)
        v = verify_store(target)
        report.steps.append((f"pack {container}", f"{r.records} records, {human_bytes(r.store_bytes)}, "
                                                  f"{r.records / max(r.seconds, 1e-9):.0f} img/s -> {target}; "
                                                  f"verify: {'ok' if v.ok else f'{len(v.bad)} bad records'}"))
    report.store = stores["shards"]
    return stores


def _bench(src: Path, stores: dict[str, Path], out: Path, demo: DemoSettings, report: DemoReport,
           progress: Progress | None) -> None:
    from sainet.bench import bench_config, run_bench, save_results
    from sainet.profiles import choose_profile

    prof = choose_profile("cpu")
    cfg = bench_config(stores=stores, source=src, imgsz=demo.imgsz, profile=prof, batch=demo.batch,
                       seconds=demo.bench_seconds)
    results = run_bench(cfg, list(demo.bench_loaders), progress=progress)
    report.bench, report.bench_config, report.bench_profile = results, cfg, prof.name
    report.bench_saved = save_results(results, cfg, out / "bench", f"demo-{format_imgsz(demo.imgsz)}", None)
    best = max((r for r in results if r.kind == "loader" and not r.name.startswith("ultralytics")),
               key=lambda r: r.images_per_s)
    report.steps.append(("bench-loader", f"best {best.name} {best.images_per_s:.0f} img/s -> {report.bench_saved}"))


def _train(store: Path, out: Path, demo: DemoSettings, report: DemoReport) -> None:
    from sainet.train import train

    r = train(demo_train_settings(store, out / "runs", demo))
    report.train = r
    losses = read_losses(r.save_dir / "results.csv")
    png = r.save_dir / "results.png"
    report.results_png = png if png.is_file() else None
    if not losses:
        report.steps.append(("train", f"{demo.epochs} epochs, none validated: no measurement to show -> {r.save_dir}"))
        return
    report.steps.append(("train", f"{demo.epochs} epochs {demo.model} at {format_imgsz(demo.imgsz)} on CPU, validated "
                                  f"after each: loss {losses[0][0]:.2f} (epoch 1) -> {losses[-1][0]:.2f} (epoch "
                                  f"{len(losses)}), val mAP50 {losses[0][1]:.3f} -> {losses[-1][1]:.3f} (demo "
                                  f"threshold {demo.map50_threshold}) -> {r.save_dir}"))


def _next_steps(report: DemoReport, demo: DemoSettings) -> list[str]:
    """What to run next: look at the training batches, train longer on the demo store, then one's own data."""
    store = report.store
    w, h = demo.size
    out = [f"sainet preview {store} --out preview.jpg   # the augmented batches the trainer sees, boxes drawn"]
    out.append(f"sainet train --data {store} --model {demo.model} --imgsz {w}x{h} --epochs 30 --device cpu "
               + " ".join(f"--set {k}={v}" for k, v in demo.hyp.items() if k in ("mosaic", "close_mosaic", "scale"))
               + "   # longer: mAP50 keeps rising")
    out.append("sainet check DATASET && sainet pack DATASET --to /dev/shm/mine && sainet train --data /dev/shm/mine "
               "--imgsz 1440x808 --stage 1   # your own data (FASDD: pack FASDD_CV.zip as downloaded)")
    return out


def run_demo(out: Path, demo: DemoSettings = DEMO, *, shm_name: str | None = None,
             progress: Progress | None = None, bench: bool = True) -> DemoReport:
    """Run every step into `out` (the shard store into /dev/shm/`shm_name` when it fits); returns what happened."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    report = DemoReport()
    src = _synth_and_check(out, demo, report, progress)
    stores = _pack_and_verify(src, out, shm_name or f"sainet-demo-{os.getuid()}", demo, report, progress)
    if bench:
        _bench(src, stores, out, demo, report, progress)
    from sainet.budget import recommend_for

    rec = recommend_for(src, None, demo.imgsz, batch=demo.batch, model=demo.model)  # as `sainet profile`/`plan` say
    _train(stores[rec.container], out, replace(demo, loader=rec.loader), report)
    report.next_steps = _next_steps(report, demo)
    report.seconds = time.perf_counter() - t0
    return report
