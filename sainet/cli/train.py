"""`sainet train`: build the TrainSettings once from the options, call sainet.train, print the result.

New training options (e.g. `--device 0,1` spawning torchrun) go here: a parameter with a help
string and a type that rejects bad values, copied into `TrainSettings` in `body`, validated there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from sainet.cli._app import PROFILE_HELP, app, console, device_type, imgsz_type, key_value_type, run
from sainet.core.errors import SettingsError
from sainet.core.topology import TorchrunEnv
from sainet.settings import LOADERS

Loader = Literal[LOADERS]  # type: ignore[valid-type]
_TELEMETRY = ("epoch", "epoch_s", "data_wait_fraction", "train_img_per_s", "loader_img_per_s")


def print_train_result(r: Any) -> None:
    if TorchrunEnv.from_env().rank:  # under torchrun, rank 0 alone reports
        return
    chosen = {k: v for k, v in r.resolved.items() if k != "overrides"}
    console.print(f"[bold]{r.save_dir}[/]: " + ", ".join(f"{k}={v}" for k, v in chosen.items()))
    m = r.metrics
    console.print(f"  mAP50 {m.get('metrics/mAP50(B)', 0):.4f} (best {m.get('best_mAP50', 0):.4f}), "
                  f"mAP50-95 {m.get('metrics/mAP50-95(B)', 0):.4f}; weights: {r.best}")
    if r.telemetry:
        t = Table(title="loader telemetry (loader.csv)")
        for col in _TELEMETRY:
            t.add_column(col, justify="right")
        for row in r.telemetry:
            t.add_row(*(str(row[c]) for c in _TELEMETRY))
        console.print(t)


def _two_stage(settings: Any, stage1_data: str, stage2_data: str, stage1_epochs: int | None, stage2_epochs: int | None) -> None:
    """`--workflow two-stage`: stage 1, then stage 2 from its best.pt; both results printed."""
    from sainet.train import two_stage

    r1, r2 = two_stage(settings, stage1_data, stage2_data, stage1_epochs=stage1_epochs, stage2_epochs=stage2_epochs)
    for r in (r1, r2):
        print_train_result(r)
    console.print(f"stage 2 started from {r1.best}")


@app.command()
def train(
    data: Annotated[str | None, typer.Option(help="Store (or, for --loader disk/ultralytics, a dataset/data.yaml).")] = None,
    loader: Annotated[Loader | None, typer.Option(help="Loader (default: the profile's).")] = None,
    model: Annotated[str, typer.Option(help="Model yaml (built from scratch) or .pt.")] = "yolov8s.yaml",
    weights: Annotated[str | None, typer.Option(help="Initial weights to transfer (e.g. stage 1's best.pt).")] = None,
    imgsz: Annotated[Any, typer.Option(parser=imgsz_type, metavar="WxH|N", help="N (square) or WIDTHxHEIGHT (rectangular, mosaic and shuffle on). Default 640, or the resumed run's.")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default: the stage's or Ultralytics').")] = None,
    batch: Annotated[int | None, typer.Option(min=1, help="Batch size (default: the profile's).")] = None,
    device: Annotated[Any, typer.Option(parser=device_type, metavar="cpu|N|N,M", help="cpu, 0, or 0,1 (DDP).")] = None,
    profile: Annotated[str, typer.Option(help=f"{PROFILE_HELP}.")] = "auto",
    config: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="YAML of Ultralytics arguments (checked as --set).")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", parser=key_value_type, metavar="KEY=VALUE", help="An Ultralytics training argument, key=value (repeatable); checked against Ultralytics' own keys, types and ranges, and refused where it would not take effect.")] = None,
    stage: Annotated[int | None, typer.Option(min=1, max=2, help="1 (FASDD: fire+smoke) or 2 (PyroSDIS: smoke) settings from configs/train.")] = None,
    workflow: Annotated[Literal["two-stage"] | None, typer.Option(help="two-stage: stage 1 then stage 2 from its best.pt.")] = None,
    stage1_data: Annotated[str | None, typer.Option(help="two-stage: stage 1 data.")] = None,
    stage2_data: Annotated[str | None, typer.Option(help="two-stage: stage 2 data.")] = None,
    stage1_epochs: Annotated[int | None, typer.Option(min=1, help="two-stage: stage 1 epochs.")] = None,
    stage2_epochs: Annotated[int | None, typer.Option(min=1, help="two-stage: stage 2 epochs.")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Decode threads (default: the profile's).")] = None,
    prefetch: Annotated[int | None, typer.Option(min=1, help="Batches prepared ahead (default: the profile's).")] = None,
    project: Annotated[str, typer.Option(help="Runs folder.")] = "runs/sainet",
    name: Annotated[str | None, typer.Option(help="Run name (default: loader-imgsz).")] = None,
    resume: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Resume from a run's weights/last.pt (a newer weights/mid_epoch.pt is taken when there is one; before the first epoch ends, pass mid_epoch.pt): its data, loader, shape and options come back.")] = None,
    checkpoint_every: Annotated[int, typer.Option(min=0, help="Also save weights/mid_epoch.pt every N batches (0: off).")] = 0,
    resample: Annotated[Literal["fast", "ultralytics"], typer.Option(help="How a sainet loader resamples train images: fast (a reduced-DCT decode, one warp; dali on a GPU: its full-size decode, one warp) or ultralytics (a full decode, Ultralytics' load-size resize, then the warp: its sharpness at any decode ratio, slower on a CPU).")] = "fast",
) -> None:
    """Train YOLOv8 with Ultralytics on a sainet loader (or Ultralytics' own, for comparison).

    Examples:

    * `sainet train --data /dev/shm/fasdd --loader dali --imgsz 1440x808 --stage 1`
    * `sainet train --data stores/synth --loader lmdb --model yolov8n.yaml --imgsz 320 --epochs 2 --device cpu`
    * `sainet train --workflow two-stage --stage1-data /dev/shm/fasdd --stage2-data /dev/shm/pyro --imgsz 1440x808`
    * `sainet train --data stores/synth --loader ultralytics --epochs 2 --set optimizer=SGD --set lr0=0.005 --set mosaic=0.5`
    * `sainet train --resume runs/sainet/dali-1440x832/weights/last.pt`
    """
    from sainet.settings import TrainSettings
    from sainet.train import train as do_train

    def body() -> int:
        settings = TrainSettings(
            data=data or "", loader=loader, model=model, weights=weights, imgsz=imgsz, epochs=epochs, batch=batch,
            device=device, profile=profile, config=str(config) if config else None, stage=stage, sets=dict(sets or []),
            project=project, name=name, threads=threads, prefetch=prefetch, resume=str(resume) if resume else None,
            checkpoint_every=checkpoint_every, resample=resample)
        if workflow:
            if not (stage1_data and stage2_data):
                raise SettingsError("two-stage needs --stage1-data and --stage2-data", "--workflow")
            _two_stage(settings, stage1_data, stage2_data, stage1_epochs, stage2_epochs)
            return 0
        if not data and not resume:
            raise SettingsError("--data is required (or --workflow two-stage, or --resume RUN/weights/last.pt)")
        print_train_result(do_train(settings))
        return 0

    run(body)
