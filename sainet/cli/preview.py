"""`sainet preview`: look at the augmented training batches before training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sainet.cli._app import app, console, imgsz_type, key_value_type, run


@app.command()
def preview(
    store: Annotated[Path, typer.Argument(help="Store to draw training samples from.")],
    out: Annotated[Path | None, typer.Option(help="JPEG to write (default runs/preview/STORE.jpg).")] = None,
    imgsz: Annotated[Any, typer.Option(parser=imgsz_type, metavar="WxH|N", help="Training shape, as for `sainet train` (default 640).")] = "640",  # type: ignore[assignment]
    batch: Annotated[int, typer.Option(min=1, max=64, help="Images in the grid (one training batch).")] = 16,
    stage: Annotated[int | None, typer.Option(min=1, max=2, help="Augmentation settings of configs/train/stage{N}.yaml.")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", parser=key_value_type, metavar="KEY=VALUE", help="An Ultralytics augmentation argument, e.g. mosaic=0.5 (repeatable).")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the batch order and the augmentation draws.")] = 0,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Augmented as in training, or letterboxed only.")] = True,
) -> None:
    """Write a JPEG grid of one augmented training batch, boxes and class names drawn.

    The batch comes from the same loader path as `sainet train` (the store's zero-copy loader, the
    stage config and --set values over Ultralytics' defaults, checked as for training), so mosaic,
    flips, colour and the rectangular shape look as the trainer will see them.

    Examples:

    * `sainet preview /dev/shm/fasdd --imgsz 1440x808 --stage 1`
    * `sainet preview stores/synth --set mosaic=0 --out preview.jpg`
    """
    import configs
    from sainet.preview import write_preview
    from sainet.validate import check_hyp

    def body() -> None:
        layers = [(f"stage {stage} (configs/train/stage{stage}.yaml)",
                   dict(configs.load("train", f"stage{stage}").get("hyp") or {}) if stage else {}),
                  ("--set", dict(sets or []))]
        hyp = check_hyp(layers, sainet_loader=True)
        target = out or Path("runs") / "preview" / f"{Path(store).resolve().name}.jpg"
        path, facts = write_preview(store, target, imgsz=imgsz, batch=batch, hyp=hyp, seed=seed, augment=augment)
        console.print(f"wrote {path}: {facts['images']} training images of {facts['shape']} (WxH) with "
                      f"{facts['boxes']} boxes, {'augmented' if augment else 'letterboxed'} by sainet's loader "
                      f"(grid {facts['grid']})", highlight=False)

    run(body)
