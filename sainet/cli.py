"""The `sainet` command line. Only this module prints and chooses exit codes."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from sainet.errors import SainetError

app = typer.Typer(
    name="sainet",
    help="Data pipeline and training front end for the SAI-Net wildfire smoke/fire detector.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()
err = Console(stderr=True)
log = logging.getLogger("sainet")


def _parse_size(text: str) -> tuple[int, int]:
    """'1440x808' -> (1440, 808): width x height, as resolutions are written."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected WIDTHxHEIGHT like 1440x808, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise typer.BadParameter(f"size must be positive, got {text!r}")
    return w, h


@contextmanager
def progress_bar(total: int | None, description: str, unit: str = "img") -> Iterator[Callable[[int], None]]:
    """A rich progress bar (rate and ETA) on stderr; yields an `advance(n)` callback."""
    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("[cyan]{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err) as p:
        task = p.add_task(description, total=total, rate="")
        start = time.perf_counter()
        done = 0

        def advance(n: int = 1) -> None:
            nonlocal done
            done += n
            elapsed = time.perf_counter() - start
            p.update(task, advance=n, rate=f"{done / elapsed:,.1f} {unit}/s" if elapsed > 0 else "")

        yield advance


def _run(fn: Callable[[], int | None]) -> None:
    """Run a command body; map typed errors to their exit codes with a one-line message."""
    try:
        code = fn() or 0
    except SainetError as e:
        err.print(f"[red]error:[/] {e}", soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    raise typer.Exit(code)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
        handlers=[RichHandler(console=err, show_time=False, show_path=False)],
    )


# ---------------------------------------------------------------------------------------------- synth


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    images: Annotated[int, typer.Option("--images", "-n", help="Number of images.")] = 64,
    size: Annotated[str, typer.Option(help="WIDTHxHEIGHT of every image.")] = "1440x808",
    classes: Annotated[Optional[str], typer.Option(help="Comma-separated classes from fire and smoke; the order sets the ids. Default fire,smoke (smoke for pyrosdis).")] = None,
    val_fraction: Annotated[float, typer.Option(help="Fraction of images in the val split.")] = 0.2,
    background: Annotated[float, typer.Option(help="Fraction of images with no object.")] = 0.1,
    layout: Annotated[str, typer.Option(help="yolo, coco, voc, fasdd or pyrosdis.")] = "yolo",
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same bytes.")] = 0,
    quality: Annotated[int, typer.Option(help="JPEG quality.")] = 90,
) -> None:
    """Write a deterministic synthetic wildfire dataset (smoke plumes, fire, exact boxes).

    Examples:

        sainet synth data/synth --images 200
        sainet synth data/pyro --classes smoke --layout pyrosdis --size 1280x720
    """
    from sainet.synth import synthesize

    def body() -> None:
        w, h = _parse_size(size)
        names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
        try:
            with progress_bar(images, "synth") as advance:
                result = synthesize(out, images=images, size=(w, h), classes=names, val_fraction=val_fraction,
                                    background=background, layout=layout, seed=seed, quality=quality, progress=advance)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        nbytes = sum(len(r.jpeg) for r in result)
        boxes = sum(len(r.objects) for r in result)
        console.print(f"wrote {len(result)} images ({nbytes / 1e6:.1f} MB, {nbytes / len(result) / 1e3:.0f} KB/img), "
                      f"{boxes} boxes, layout {layout} -> {out}")

    _run(body)


# ---------------------------------------------------------------------------------------------- check


def _print_check(report, max_problems: int) -> None:  # noqa: ANN001 - CheckReport
    t = Table(title=f"{report.layout} dataset {report.source} (per class: boxes/images)")
    t.add_column("split")
    t.add_column("images", justify="right")
    t.add_column("boxes", justify="right")
    t.add_column("backgrounds", justify="right")
    t.add_column("bad images", justify="right")
    for n in report.names:
        t.add_column(n, justify="right")
    for sp, st in report.splits.items():
        t.add_row(sp, str(st.images), str(st.boxes), str(st.backgrounds), str(st.bad_images),
                  *(f"{st.per_class[n]}/{st.images_per_class[n]}" for n in report.names))
    console.print(t)
    if report.problems:
        pt = Table(title=f"{len(report.problems)} problems " + ", ".join(f"{k}: {v}" for k, v in report.problem_counts().items()))
        for col in ("severity", "kind", "path", "detail"):
            pt.add_column(col, overflow="fold")
        for p in report.problems[:max_problems]:
            pt.add_row(p.severity.name.lower(), p.kind.value, p.path, p.detail)
        console.print(pt)
        if len(report.problems) > max_problems:
            console.print(f"... {len(report.problems) - max_problems} more (use --json for all)")
    else:
        console.print("no problems found")


@app.command()
def check(
    src: Annotated[Path, typer.Argument(help="Dataset folder, data.yaml or parquet shard.")],
    layout: Annotated[Optional[str], typer.Option(help="yolo, coco, voc, fasdd, pyrosdis (default: detect).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    strict: Annotated[bool, typer.Option(help="Fail on warnings too (dropped boxes, bad images).")] = False,
    threads: Annotated[int, typer.Option(help="Decode threads.")] = os.cpu_count() or 2,
    max_problems: Annotated[int, typer.Option(help="Problems listed in the table.")] = 50,
) -> None:
    """Validate a dataset without changing it: counts per split and class, and every problem with its file.

    Exit code 0 when the dataset is usable (with --strict: and has no warnings), non-zero otherwise.

    Examples:

        sainet check datasets/FASDD_CV
        sainet check data/pyro --layout pyrosdis --json > report.json
    """
    from sainet.check import check_dataset
    from sainet.datasets import Severity, open_dataset

    def body() -> int:
        ds = open_dataset(src, layout)
        with progress_bar(None, f"check {ds.layout}") as advance:
            report = check_dataset(ds, threads=threads, progress=advance)
        if as_json:
            print(json.dumps(report.as_dict(), indent=2))
        else:
            _print_check(report, max_problems)
        reason = report.unusable_reason()
        if reason is None and strict:
            warn = [p for p in report.problems if p.severity >= Severity.WARNING]
            if warn:
                reason = f"{len(warn)} warnings (--strict), first: {warn[0].path}: {warn[0].detail}"
        if reason:
            err.print(f"[red]not usable:[/] {reason}", soft_wrap=True)
            return 1
        if not as_json:
            console.print(f"[green]usable:[/] {report.images} images, {report.boxes} boxes, {len(report.names)} classes")
        return 0

    _run(body)


# ---------------------------------------------------------------------------------------------- demo


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Working folder for the demo's data.")] = Path("demo"),
    images: Annotated[int, typer.Option(help="Synthetic images to make.")] = 48,
) -> None:
    """Run the main job end to end on embedded synthetic data and summarize what happened.

    Example:

        sainet demo --out demo
    """
    from sainet.check import check_dataset
    from sainet.datasets import open_dataset
    from sainet.synth import synthesize

    def body() -> int:
        summary: list[tuple[str, str]] = []
        src = out / "synth"
        t0 = time.perf_counter()
        with progress_bar(images, "synth") as advance:
            result = synthesize(src, images=images, size=(1440, 808), seed=0, progress=advance)
        mb = sum(len(r.jpeg) for r in result) / 1e6
        summary.append(("synth", f"{len(result)} images 1440x808, {mb:.1f} MB JPEG in {time.perf_counter() - t0:.1f}s -> {src}"))
        ds = open_dataset(src)
        with progress_bar(images, "check") as advance:
            report = check_dataset(ds, progress=advance)
        reason = report.unusable_reason()
        summary.append(("check", f"{report.images} images, {report.boxes} boxes, {len(report.problems)} problems"
                        + (f", NOT usable: {reason}" if reason else ", usable")))
        t = Table(title="sainet demo")
        t.add_column("step")
        t.add_column("result")
        for step, text in summary:
            t.add_row(step, text)
        console.print(t)
        return 1 if reason else 0

    _run(body)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
