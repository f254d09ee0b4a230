"""The `sainet` command line. Only this module prints and chooses exit codes."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
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


class _Bar:
    """What `progress_bar` yields: call it to advance; `start(total, done)` once the work is known."""

    def __init__(self, progress: Progress, task: int, unit: str) -> None:
        self._p, self._task, self._unit = progress, task, unit
        self._start, self._done = time.perf_counter(), 0

    def __call__(self, n: int = 1) -> None:
        self._done += n
        elapsed = time.perf_counter() - self._start
        self._p.update(self._task, advance=n, rate=f"{self._done / elapsed:,.1f} {self._unit}/s" if elapsed > 0 else "")

    def start(self, total: int, done: int = 0) -> None:
        self._p.update(self._task, total=total, completed=done)
        self._start = time.perf_counter()


@contextmanager
def progress_bar(total: int | None, description: str, unit: str = "img") -> Iterator[_Bar]:
    """A rich progress bar on stderr with the rate and the ETA."""
    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("[cyan]{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err) as p:
        yield _Bar(p, p.add_task(description, total=total, rate=""), unit)


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def _parse_bytes(text: str) -> int:
    """'125GB', '1GiB', '4096' -> bytes."""
    t = text.strip().lower().replace(" ", "")
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num):]
    try:
        return int(float(num) * _UNITS[unit])
    except (ValueError, KeyError):
        raise typer.BadParameter(f"expected a size like 125GB or 1GiB, got {text!r}") from None


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
    classes: Annotated[str | None, typer.Option(help="Comma-separated classes from fire and smoke; the order sets the ids. Default fire,smoke (smoke for pyrosdis).")] = None,
    val_fraction: Annotated[float, typer.Option(help="Fraction of images in the val split.")] = 0.2,
    background: Annotated[float, typer.Option(help="Fraction of images with no object.")] = 0.1,
    layout: Annotated[str, typer.Option(help="yolo, coco, voc, fasdd or pyrosdis.")] = "yolo",
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same bytes.")] = 0,
    quality: Annotated[int, typer.Option(help="JPEG quality.")] = 90,
    subset: Annotated[str, typer.Option(help="fasdd: the FASDD subset shape, CV, UAV or RS (TIFF).")] = "CV",
    test_fraction: Annotated[float | None, typer.Option(help="Fraction in the test split (default 0.15 for fasdd, else 0).")] = None,
    clean: Annotated[bool, typer.Option(help="fasdd/pyrosdis: without the published datasets' quirks (duplicates, leaks, bad boxes).")] = False,
) -> None:
    """Write a deterministic synthetic wildfire dataset (smoke plumes, fire, exact boxes).

    The fasdd and pyrosdis layouts are shaped like the published datasets, quirks included
    (see sainet.synth.PLANTED for the exact numbers).

    Examples:

        sainet synth data/synth --images 200
        sainet synth data/pyro --classes smoke --layout pyrosdis --size 1280x720
        sainet synth data/FASDD_RS --layout fasdd --subset RS --size 640x640
    """
    from sainet.synth import synthesize

    def body() -> None:
        w, h = _parse_size(size)
        names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
        try:
            with progress_bar(images, "synth") as advance:
                result = synthesize(out, images=images, size=(w, h), classes=names, val_fraction=val_fraction,
                                    background=background, layout=layout, seed=seed, quality=quality, progress=advance,
                                    subset=subset, test_fraction=test_fraction, quirks=False if clean else None)
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
    _print_dataset_facts(report.notes, report.tally.as_dict(), report.duplicates.summary())


def _print_dataset_facts(notes: list[str], boxes: dict, duplicates: dict | None) -> None:
    """The lines check and pack both print: notes, where every box went, duplicates and leaks."""
    for n in notes:
        console.print(f"note: {n}")
    dropped = ", ".join(f"{k} {v}" for k, v in boxes["dropped"].items())
    extra = "".join(f", {k.replace('_', ' ')} {sum(v.values()) if isinstance(v, dict) else v}"
                    for k, v in boxes.items() if k in ("filtered_by_class", "in_dropped_leaks", "in_left_out_images", "stored"))
    console.print(f"boxes: read {boxes['read']}, kept {boxes['kept']} (clipped {boxes['clipped']}), dropped "
                  f"{boxes['dropped_total']}" + (f" ({dropped})" if dropped else "") + extra + f", lost {boxes['lost']}")
    if duplicates is None:
        return
    for where, title in (("within", "duplicates within a split"), ("across", "duplicates across splits (leakage)")):
        groups = duplicates[where]
        if not groups:
            console.print(f"{title}: none")
        for key, g in groups.items():
            console.print(f"{title}: {key} {g['groups']} groups ({g['images']} images), e.g. {'; '.join(g['examples'][:2])}",
                          soft_wrap=True)


@app.command()
def check(
    src: Annotated[Path, typer.Argument(help="Dataset folder, data.yaml or parquet shard.")],
    layout: Annotated[str | None, typer.Option(help="yolo, coco, voc, fasdd, pyrosdis (default: detect).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    strict: Annotated[bool, typer.Option(help="Fail on warnings too (dropped boxes, bad images).")] = False,
    threads: Annotated[int, typer.Option(help="Decode threads.")] = os.cpu_count() or 2,
    max_problems: Annotated[int, typer.Option(help="Problems listed in the table.")] = 50,
    class_ids: Annotated[str | None, typer.Option(help="pyrosdis: the annotations' class ids, e.g. 1=smoke (default: detected).")] = None,
) -> None:
    """Validate a dataset without changing it: counts per split and class, and every problem with its file.

    Also says where every box went (kept, clipped, dropped: nothing is lost), exact-duplicate images
    within and across splits (leakage), and facts about the dataset (e.g. 1-based class ids).

    Exit code 0 when the dataset is usable (with --strict: and has no warnings), non-zero otherwise.

    Examples:

        sainet check datasets/FASDD_CV
        sainet check data/pyro --layout pyrosdis --json > report.json
    """
    from sainet.check import check_dataset
    from sainet.datasets import Severity, open_dataset

    def body() -> int:
        ds = open_dataset(src, layout, _class_ids(class_ids))
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


# ---------------------------------------------------------------------------------------------- stores


def _class_ids(text: str | None) -> dict[int, str] | None:
    """``1=smoke,2=fire`` -> {1: "smoke", 2: "fire"}."""
    if not text:
        return None
    try:
        pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
        return {int(k): v.strip() for k, v in pairs if v.strip()}
    except ValueError:
        raise typer.BadParameter(f"--class-ids: expected ID=NAME[,ID=NAME], got {text!r}") from None


def _imgsz_option(text: str | None) -> tuple[int, int] | None:
    from sainet.geometry import parse_imgsz

    if text is None:
        return None
    try:
        return parse_imgsz(text)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


@app.command()
def pack(
    src: Annotated[list[Path], typer.Argument(help="Source dataset(s) (any layout `sainet check` reads); several are combined, classes unified by name.")],
    to: Annotated[Path, typer.Option("--to", help="Store to create, e.g. /dev/shm/fasdd.")],
    fmt: Annotated[str | None, typer.Option("--format", help="lmdb or shards (default: shards on tmpfs, lmdb elsewhere).")] = None,
    mode: Annotated[str, typer.Option(help="jpeg (original bytes) or raw (decoded, letterboxed frames).")] = "jpeg",
    imgsz: Annotated[str, typer.Option(help="raw mode: training shape, WIDTHxHEIGHT or N (padded to stride 32).")] = "1440x808",
    max_size: Annotated[int | None, typer.Option(help="jpeg mode: re-encode images whose long side exceeds this.")] = None,
    layout: Annotated[str | None, typer.Option(help="Source layout (default: detect).")] = None,
    threads: Annotated[int | None, typer.Option(help="Decode threads (default: all cores).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted pack of the same source and settings.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing store (swapped in only when the new one is complete).")] = False,
    shard_size: Annotated[str, typer.Option(help="shards: target shard file size.")] = "1GiB",
    assume_free: Annotated[str | None, typer.Option(help="Plan against this much free space instead of the measured figure.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    classes: Annotated[str | None, typer.Option(help="Keep these classes only, by name and in this order, e.g. smoke.")] = None,
    drop_leaks: Annotated[bool, typer.Option(help="Leave out train images whose bytes also appear in val or test.")] = False,
    class_ids: Annotated[str | None, typer.Option(help="pyrosdis: the annotations' class ids, e.g. 1=smoke (default: detected).")] = None,
) -> None:
    """Pack a dataset into an LMDB or shard store, after checking that it fits.

    Every image is decoded once; corrupt ones are reported and left out. The store appears
    atomically when complete; an interrupted pack is resumed with --resume.

    Examples:

        sainet pack datasets/FASDD_CV --to /dev/shm/fasdd
        sainet pack data/synth --to stores/synth-raw --mode raw --imgsz 1440x808 --format lmdb
        sainet pack datasets/FASDD_CV --to /dev/shm/fasdd --resume
        sainet pack datasets/FASDD_CV datasets/FASDD_UAV datasets/FASDD_RS --to /dev/shm/fasdd --drop-leaks
        sainet pack datasets/pyro-sdis --to /dev/shm/pyro --classes smoke
    """
    from cache_tools.pack import PackOptions
    from cache_tools.pack import pack as do_pack
    from cache_tools.plan import human_bytes

    def body() -> int:
        if mode not in ("jpeg", "raw"):
            raise typer.BadParameter("--mode must be jpeg or raw")
        opts = PackOptions(
            container=fmt, mode=mode, imgsz=_imgsz_option(imgsz) if mode == "raw" else None, max_size=max_size,
            layout=layout, threads=threads, resume=resume, force=force, shard_size=_parse_bytes(shard_size),
            free_bytes=_parse_bytes(assume_free) if assume_free else None, drop_leaks=drop_leaks,
            classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None, class_ids=_class_ids(class_ids),
        )
        with progress_bar(None, "pack") as bar:
            report = do_pack(src, to, opts, progress=bar, on_start=bar.start)
        if as_json:
            print(json.dumps({
                "store": str(report.store), "container": report.container, "mode": report.mode,
                "records": report.records, "left_out": report.bad, "reencoded": report.reencoded,
                "resumed": report.resumed, "payload_bytes": report.payload_bytes, "store_bytes": report.store_bytes,
                "seconds": round(report.seconds, 3), "annotation_problems": [p.as_dict() for p in report.problems],
                "boxes": report.boxes, "dropped_leaks": report.dropped_leaks, "notes": report.notes,
            }, indent=2))
            return 0
        console.print(f"packed {report.records} images into {report.store} ({report.container}, {report.mode}): "
                      f"{human_bytes(report.store_bytes)} in {report.seconds:.1f}s "
                      f"({report.records / max(report.seconds, 1e-9):.0f} img/s)"
                      + (f", resumed after {report.resumed}" if report.resumed else ""))
        if report.reencoded:
            console.print(f"[yellow]re-encoded[/] {report.reencoded} images larger than --max-size {max_size}")
        if report.bad:
            console.print(f"[yellow]left out {len(report.bad)} images:[/]")
            for b in report.bad[:20]:
                console.print(f"  {b['key']}: {b['reason']}", soft_wrap=True)
        if report.problems:
            console.print(f"{len(report.problems)} annotation problems (boxes dropped or clipped); see `sainet check`")
        if report.dropped_leaks:
            console.print(f"dropped {len(report.dropped_leaks)} train images also in val/test (--drop-leaks), e.g. "
                          + "; ".join(f"{d['name']} = {d['same_as']}" for d in report.dropped_leaks[:3]), soft_wrap=True)
        _print_dataset_facts(report.notes, report.boxes, None)
        return 0

    _run(body)


@app.command()
def inspect(
    store: Annotated[Path, typer.Argument(help="Store folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Describe a store: format, version, mode, imgsz, per-split counts, classes, bytes.

    Examples:

        sainet inspect /dev/shm/fasdd
        sainet inspect stores/synth-raw --json
    """
    from cache_tools.plan import human_bytes
    from cache_tools.verify import describe_store

    def body() -> None:
        d = describe_store(store)
        if as_json:
            print(json.dumps(d, indent=2))
            return
        t = Table(title=f"store {d['path']}", show_header=False)
        t.add_column("field")
        t.add_column("value")
        imgsz = f"{d['imgsz'][1]}x{d['imgsz'][0]} (WxH)" if d["imgsz"] else "-"
        for k, v in [
            ("format", f"{d['container']}, version {d['format_version']}"), ("mode", d["mode"]), ("imgsz", imgsz),
            ("records", str(d["records"])), ("splits", ", ".join(f"{k}: {v}" for k, v in d["splits"].items())),
            ("classes", ", ".join(f"{c} ({n} boxes)" for c, n in d["boxes_per_class"].items())),
            ("payload", human_bytes(d["payload_bytes"])), ("on disk", human_bytes(d["store_bytes"])),
            ("source", f"{d['source']} ({d['layout']})"), ("created", str(d["created"])),
            ("left out", str(d["left_out"])), ("re-encoded", str(d["reencoded"])),
        ]:
            t.add_row(k, v)
        console.print(t)

    _run(body)


@app.command()
def verify(
    store: Annotated[Path, typer.Argument(help="Store folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    threads: Annotated[int, typer.Option(help="Checksum threads.")] = os.cpu_count() or 2,
) -> None:
    """Check a store's index, structure and every record's checksum; exit 1 naming each bad record.

    Examples:

        sainet verify /dev/shm/fasdd
        sainet verify stores/synth-raw --json
    """
    from cache_tools.verify import verify_store

    def body() -> int:
        with progress_bar(None, "verify") as bar:
            report = verify_store(store, threads=threads, progress=bar)
        if as_json:
            print(json.dumps(report.as_dict(), indent=2))
        elif report.ok:
            console.print(f"[green]ok:[/] {report.checked} records verified in {store}")
        for b in report.bad:
            err.print(f"[red]bad record {b['record']}[/] {b['name']}: {b['reason']}", soft_wrap=True)
        return 0 if report.ok else 1

    _run(body)


@app.command()
def export(
    store: Annotated[Path, typer.Argument(help="Store folder.")],
    to: Annotated[Path, typer.Option("--to", help="Folder for the YOLO dataset.")],
    force: Annotated[bool, typer.Option(help="Write into a non-empty folder.")] = False,
) -> None:
    """Write a store back out as an Ultralytics YOLO folder with data.yaml (jpeg stores: byte-identical images).

    Examples:

        sainet export /dev/shm/fasdd --to exported/fasdd
        sainet check exported/fasdd
    """
    from cache_tools.export import export_store

    def body() -> None:
        with progress_bar(None, "export") as bar:
            n = export_store(store, to, force=force, progress=bar)
        console.print(f"exported {n} images to {to} (data.yaml)")

    _run(body)


def _describe_source(text: str) -> tuple[int, tuple[int, int], int] | None:
    """'117000@1440x808:180KB' -> (images, (w, h), jpeg bytes); None when `text` is a path."""
    import re

    m = re.fullmatch(r"(\d+)@(\d+)x(\d+)(?::([\d.]+\s*[kKmM]?[bB]?))?", text.strip())
    if not m:
        return None
    n, w, h = int(m.group(1)), int(m.group(2)), int(m.group(3))
    per = _parse_bytes(m.group(4)) if m.group(4) else int(w * h * 0.15)  # ~0.15 B/px: a q90 photo
    return n, (w, h), n * per


@app.command()
def plan(
    source: Annotated[str | None, typer.Option("--source", help="Dataset folder, or a description N@WxH[:avgKB] (e.g. 122634@1440x808:180KB, FASDD CV+UAV+RS).")] = None,
    store: Annotated[Path | None, typer.Option("--store", help="An existing store.")] = None,
    profile: Annotated[str, typer.Option(help="auto (this host) or a profile name, e.g. h200.")] = "auto",
    imgsz: Annotated[str, typer.Option(help="Training shape, WIDTHxHEIGHT or N.")] = "1440x808",
    batch: Annotated[int | None, typer.Option(help="Batch per GPU (default: the profile's).")] = None,
    model: Annotated[str, typer.Option(help="Model, for the VRAM estimate.")] = "yolov8s.yaml",
    to: Annotated[Path | None, typer.Option("--to", help="Also check this target filesystem for the store.")] = None,
    layout: Annotated[str | None, typer.Option(help="Source layout (default: detect).")] = None,
    assume_free: Annotated[str | None, typer.Option(help="With --to: plan against this much free space.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Print the memory budget of a store and a training run against a hardware profile, and what fits.

    Store bytes per mode (jpeg / raw), loader buffers (sainet's, and Ultralytics' workers and
    cache=ram per rank), the VRAM estimate, against the profile's RAM, /dev/shm and VRAM.

    Examples:

        sainet plan --profile h200 --source 122634@1440x808:180KB      # FASDD CV + UAV + RS
        sainet plan --profile a10g --source 33636@1280x720:100KB       # PyroSDIS (train + val)
        sainet plan --source datasets/FASDD_CV --to /dev/shm/fasdd
        sainet plan --store /dev/shm/fasdd --profile a10g --batch 12 --json
    """
    from cache_tools.pack import plan_pack
    from cache_tools.plan import check_fits, estimate_store, fs_info, human_bytes
    from cache_tools.store import open_store
    from sainet.budget import estimate_budget
    from sainet.datasets import open_dataset
    from sainet.errors import CapacityError
    from sainet.profiles import detect_host, get_profile, nearest_profile

    def body() -> None:
        shape = _imgsz_option(imgsz)
        if (source is None) == (store is None):
            raise typer.BadParameter("give one of --source or --store")
        src_hw = None
        if store is not None:
            with open_store(store) as s:
                jpeg = int(s.index.records["length"].sum()) if s.mode == "jpeg" else 0
                est = estimate_store(len(s), len(s.index.boxes), jpeg, len(s.index.strings), shape)
                if len(s):
                    src_hw = (int(s.index.records["orig_h"].max()), int(s.index.records["orig_w"].max()))
        elif (desc := _describe_source(source)) is not None:
            n, (w, h), jpeg = desc
            est = estimate_store(n, 3 * n, jpeg, 64 * n, shape)
            src_hw = (h, w)
        else:
            ds = open_dataset(source, layout)
            first: list[tuple[int, int]] = []

            def sized(samples):  # noqa: ANN001, ANN202 - streams: no sample (nor its pixels) is kept
                for s in samples:
                    if not first:
                        first.append(s.original_size())
                    yield s

            est = plan_pack(ds, sized(ds.samples()), shape)
            if first:
                w, h = first[0]
                src_hw = (h, w)
        host = detect_host()
        prof = nearest_profile(host)[0] if profile == "auto" else get_profile(profile)
        rec = prof.recommended
        b = batch or int(rec["batch"])
        bud = estimate_budget(images=est.images, imgsz=shape, batch=b, threads=int(rec["threads"]),
                              prefetch=int(rec["prefetch"]), workers=min(8, prof.cores), model=model, source_hw=src_hw)
        ram, shm, vram = prof.ram_gb * 1e9, prof.shm_gb * 1e9, prof.vram_gb * 1e9
        ranks = max(1, prof.gpus)
        rows = []

        def verdict(need: float, have: float, where: str) -> str:
            return f"fits ({human_bytes(need)} of {human_bytes(have)} {where})" if need <= have else \
                f"does not fit ({human_bytes(need)} > {human_bytes(have)} {where})"

        for m in ("jpeg", "raw"):
            need = est.total(m, "shards")
            rows.append({"item": f"store {m}" + (f" at {shape[1]}x{shape[0]}" if m == "raw" else ""), "bytes": need,
                         "host RAM (page cache)": verdict(need, ram, "RAM"),
                         "/dev/shm": verdict(need, shm, "shm") if shm else "no /dev/shm in this profile"})
        rows.append({"item": f"sainet loader buffers x {ranks} rank(s)", "bytes": bud.sainet_loader_bytes * ranks,
                     "host RAM (page cache)": verdict(bud.sainet_loader_bytes * ranks, ram, "RAM"), "/dev/shm": "-"})
        rows.append({"item": f"Ultralytics workers ({min(8, prof.cores)}/rank) x {ranks}", "bytes": bud.ultralytics_loader_bytes * ranks,
                     "host RAM (page cache)": verdict(bud.ultralytics_loader_bytes * ranks, ram, "RAM"), "/dev/shm": "-"})
        rows.append({"item": f"Ultralytics cache=ram x {ranks} rank(s)", "bytes": bud.ultralytics_ram_cache_bytes * ranks,
                     "host RAM (page cache)": verdict(bud.ultralytics_ram_cache_bytes * ranks, ram, "RAM"), "/dev/shm": "-"})
        vram_line = verdict(bud.vram_bytes, vram, "VRAM") if vram else "no GPU in this profile"
        jpeg_need = est.total("jpeg", "shards")
        if shm and jpeg_need <= shm and jpeg_need <= ram:
            advice = f"pack --mode jpeg into /dev/shm (shards) and train with --loader {rec['loader']}"
        elif jpeg_need <= ram:
            advice = f"pack --mode jpeg as LMDB on local disk (the page cache holds it) and train with --loader {rec['loader']}"
        else:
            advice = "the jpeg store exceeds RAM: pack LMDB on fast local disk and expect cold reads"
        if est.total("raw", "shards") <= (shm or ram) and est.total("raw", "shards") <= ram:
            advice += "; raw also fits and skips decoding"
        target = None
        if to is not None:
            fs = fs_info(to.parent, free=_parse_bytes(assume_free) if assume_free else None)
            target = {"path": str(to), "fstype": fs.fstype, "free": fs.free, "usable": fs.usable, "verdicts": {}}
            for m in ("jpeg", "raw"):
                try:
                    check_fits(est, m, "shards" if fs.in_memory else "lmdb", fs)
                    target["verdicts"][m] = "fits"
                except CapacityError as e:
                    target["verdicts"][m] = str(e)
        doc = {"profile": prof.name, "images": est.images, "imgsz": [shape[0], shape[1]], "batch": b, "model": model,
               "rows": rows, "vram_estimate": bud.vram_bytes, "vram": vram_line, "recommendation": advice, "target": target}
        if as_json:
            print(json.dumps(doc, indent=2))
            return
        t = Table(title=f"memory plan: {est.images} images, {shape[1]}x{shape[0]}, batch {b}, profile {prof.name} "
                        f"({prof.ram_gb:.0f} GB RAM, {prof.shm_gb:.0f} GB shm, {prof.gpus}x{prof.vram_gb:.0f} GB GPU)")
        for col in ("item", "bytes", "host RAM (page cache)", "/dev/shm"):
            t.add_column(col, overflow="fold")
        for r in rows:
            t.add_row(r["item"], human_bytes(r["bytes"]), r["host RAM (page cache)"], r["/dev/shm"])
        console.print(t)
        console.print(f"VRAM per GPU (estimate, {model}): {vram_line}")
        if target:
            for m, v in target["verdicts"].items():
                console.print(f"{m} store at {to}: {v}", soft_wrap=True)
        console.print(f"[bold]recommendation:[/] {advice}")

    _run(body)


@app.command()
def profile(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Detect this host (GPUs and VRAM, RAM, cores, /dev/shm) and name the nearest hardware profile.

    Examples:

        sainet profile
        sainet profile --json
    """
    from sainet.profiles import detect_host, nearest_profile

    def body() -> None:
        host = detect_host()
        prof, dist = nearest_profile(host)
        doc = {"host": host.as_dict(), "profile": prof.name, "distance": round(dist, 3), "recommended": prof.recommended}
        if as_json:
            print(json.dumps(doc, indent=2))
            return
        gpus = ", ".join(host.gpu_names) or "none"
        console.print(f"host: {host.cores} cores, {host.ram_gb:.1f} GB RAM ({host.ram_available_gb:.1f} available), "
                      f"GPUs: {gpus} ({host.vram_gb:.0f} GB each), /dev/shm {host.shm_gb:.1f} GB ({host.shm_free_gb:.1f} free)")
        console.print(f"nearest profile: [bold]{prof.name}[/] ({prof.description}); recommended: "
                      + ", ".join(f"{k}={v}" for k, v in prof.recommended.items()))

    _run(body)


@app.command("bench-loader")
def bench_loader(
    store: Annotated[Path | None, typer.Option(help="A store to benchmark (its source is used for disk/ultralytics).")] = None,
    source: Annotated[Path | None, typer.Option(help="A dataset folder: the stores are packed from it once.")] = None,
    loaders: Annotated[str, typer.Option(help="Backends: disk,ram,shm,lmdb,dali,ultralytics,ultralytics-ram,raw-shm,raw-lmdb.")] = "disk,ram,shm,lmdb,dali,ultralytics",
    imgsz: Annotated[str, typer.Option(help="Training shape, WIDTHxHEIGHT or N.")] = "1440x808",
    batch: Annotated[int | None, typer.Option(help="Batch size (default: the profile's).")] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Full train augmentation, or eval letterbox only.")] = True,
    seconds: Annotated[float, typer.Option(help="Seconds measured per backend (after warm-up).")] = 10.0,
    batches: Annotated[int | None, typer.Option(help="Batches measured per backend (instead of --seconds).")] = None,
    cold: Annotated[bool, typer.Option(help="Evict the files' pages first (posix_fadvise), so reads are real.")] = False,
    raw: Annotated[bool, typer.Option(help="Also pack a raw store and measure the raw-copy reference.")] = False,
    profile: Annotated[str, typer.Option(help="auto or a profile name: threads, prefetch, workers, batch.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="Decode threads (default: the profile's, at most the cores).")] = None,
    workers: Annotated[int | None, typer.Option(help="Ultralytics DataLoader workers (default: the profile's threads).")] = None,
    work: Annotated[Path, typer.Option(help="Where stores packed from --source are kept.")] = Path(".cache/bench"),
    out: Annotated[Path, typer.Option(help="Results folder; a subfolder per profile.")] = Path("benchmarks/results"),
    tag: Annotated[str | None, typer.Option(help="Name of the saved result (default: imgsz-aug-time).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Also write the chart here.")] = None,
    repeats: Annotated[int, typer.Option(help="Rounds over all backends (round-robin); figures are medians.")] = 1,
    hyp_set: Annotated[list[str] | None, typer.Option("--set", help="Augmentation hyp key=value (Ultralytics names) for every backend; default mixup=0.15.")] = None,
) -> None:
    """Measure every loader backend side by side with Ultralytics' own, against decode and work-minimum references.

    Ratios to Ultralytics are images/s only between equal output shapes (its train loader is square);
    a rectangular shape is compared in megapixels/s (marked "Mpx").

    Examples:

        sainet bench-loader --source data/synth --imgsz 1440x808
        sainet bench-loader --store /dev/shm/fasdd --loaders shm,dali,ultralytics --no-augment --json
        sainet bench-loader --source data/synth --imgsz 640 --raw --loaders shm,raw-shm --cold
    """
    from sainet.bench import BENCH_HYP, BenchConfig, headline, parse_loaders, prepare_stores, run_bench
    from sainet.bench import save_results as save_bench
    from sainet.profiles import detect_host, get_profile, nearest_profile

    def body() -> int:
        if store is None and source is None:
            raise typer.BadParameter("give --store or --source")
        shape = _imgsz_option(imgsz)
        prof = nearest_profile(detect_host())[0] if profile == "auto" else get_profile(profile)
        rec = prof.recommended
        n_threads = threads or min(int(rec["threads"]), os.cpu_count() or 2)
        names = parse_loaders(loaders)
        stores, src = prepare_stores(source, store, work, shape, raw or "raw-shm" in names, "raw-lmdb" in names)
        cfg = BenchConfig(stores=stores, source=src, imgsz=shape, batch=batch or int(rec["batch"]), augment=augment,
                          seconds=seconds, batches=batches, threads=n_threads, prefetch=int(rec["prefetch"]),
                          workers=workers or n_threads, cold=cold, repeats=repeats, scratch=work,
                          hyp={**BENCH_HYP, **_parse_sets(hyp_set or [])})
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed} img"),
                      TimeElapsedColumn(), console=err) as p:
            def bar(name: str, total: int | None):  # noqa: ANN202
                task = p.add_task(name, total=total)
                return lambda n: p.update(task, advance=n)

            results = run_bench(cfg, names, progress=bar)
        run_tag = tag or f"{shape[1]}x{shape[0]}-{'aug' if augment else 'noaug'}-{time.strftime('%Y%m%d-%H%M%S')}"
        saved = save_bench(results, cfg, out / prof.name, run_tag, plot)
        if as_json:
            print(saved.read_text())
            return 0
        t = Table(title=f"bench-loader {shape[1]}x{shape[0]} batch {cfg.batch} {'augment' if augment else 'no augment'}, "
                        f"{n_threads} threads, profile {prof.name}")
        for col in ("backend", "shape", "decodes/img", "img/s", "Mpx/s", "p50 ms", "p99 ms", "CPU %", "PSS MB", "anon MB",
                    "x decode", "x work-min", "x ultralytics"):
            t.add_column(col, justify="right" if col != "backend" else "left")
        for r in results:
            f = lambda v, fmt="{:.1f}": "-" if v is None else fmt.format(v)  # noqa: E731
            ul = f(r.ratios.get("vs_ultralytics"), "{:.2f}")
            if "mpx_vs_ultralytics" in r.ratios:
                ul = f"{r.ratios['mpx_vs_ultralytics']:.2f} Mpx"
            t.add_row(r.name, r.out_shape or "source", f(r.decodes_per_image, "{:g}"), f(r.images_per_s), f(r.megapixels_per_s),
                      f(r.p50_ms), f(r.p99_ms), f(r.cpu_percent, "{:.0f}"), f(r.pss_mb), f(r.pss_anon_mb),
                      f(r.ratios.get("vs_decode"), "{:.2f}"), f(r.ratios.get("vs_work-minimum"), "{:.2f}"), ul)
        console.print(t)
        for note in dict.fromkeys(f"{r.name}: {r.note}" for r in results if r.note):
            console.print(note)
        console.print(headline(results))
        console.print(f"saved {saved} and its chart")
        return 0

    _run(body)


# ---------------------------------------------------------------------------------------------- train


def _parse_sets(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"--set takes key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)  # numbers, booleans and lists as YAML reads them
    return out


@app.command()
def train(
    data: Annotated[str | None, typer.Option(help="Store (or, for --loader disk/ultralytics, a dataset/data.yaml).")] = None,
    loader: Annotated[str | None, typer.Option(help="dali, lmdb, shm, ram, disk or ultralytics (default: the profile's).")] = None,
    model: Annotated[str, typer.Option(help="Model yaml (built from scratch) or .pt.")] = "yolov8s.yaml",
    weights: Annotated[str | None, typer.Option(help="Initial weights to transfer (e.g. stage 1's best.pt).")] = None,
    imgsz: Annotated[str, typer.Option(help="N (square) or WIDTHxHEIGHT (rectangular, mosaic and shuffle on).")] = "640",
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the stage's or Ultralytics').")] = None,
    batch: Annotated[int | None, typer.Option(help="Batch size (default: the profile's).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, 0, or 0,1 (DDP).")] = None,
    profile: Annotated[str, typer.Option(help="auto (detect the host) or a profile name.")] = "auto",
    config: Annotated[Path | None, typer.Option(help="YAML of Ultralytics arguments.")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="Any Ultralytics argument, key=value (repeatable).")] = None,
    stage: Annotated[int | None, typer.Option(help="1 (FASDD: fire+smoke) or 2 (PyroSDIS: smoke) settings from configs/train.")] = None,
    workflow: Annotated[str | None, typer.Option(help="two-stage: stage 1 then stage 2 from its best.pt.")] = None,
    stage1_data: Annotated[str | None, typer.Option(help="two-stage: stage 1 data.")] = None,
    stage2_data: Annotated[str | None, typer.Option(help="two-stage: stage 2 data.")] = None,
    stage1_epochs: Annotated[int | None, typer.Option(help="two-stage: stage 1 epochs.")] = None,
    stage2_epochs: Annotated[int | None, typer.Option(help="two-stage: stage 2 epochs.")] = None,
    threads: Annotated[int | None, typer.Option(help="Decode threads (default: the profile's).")] = None,
    prefetch: Annotated[int | None, typer.Option(help="Batches prepared ahead (default: the profile's).")] = None,
    project: Annotated[str, typer.Option(help="Runs folder.")] = "runs/sainet",
    name: Annotated[str | None, typer.Option(help="Run name (default: loader-imgsz).")] = None,
    resume: Annotated[str | None, typer.Option(help="Resume from a run's weights/last.pt (or weights/mid_epoch.pt).")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Also save weights/mid_epoch.pt every N batches (0: off).")] = 0,
) -> None:
    """Train YOLOv8 with Ultralytics on a sainet loader (or Ultralytics' own, for comparison).

    Examples:

        sainet train --data /dev/shm/fasdd --loader dali --imgsz 1440x808 --stage 1
        sainet train --data stores/synth --loader lmdb --model yolov8n.yaml --imgsz 320 --epochs 2 --device cpu
        sainet train --workflow two-stage --stage1-data /dev/shm/fasdd --stage2-data /dev/shm/pyro --imgsz 1440x808
        sainet train --data stores/synth --loader ultralytics --epochs 2 --set lr0=0.005 --set mosaic=0.5
        sainet train --resume runs/sainet/dali-1440x832/weights/last.pt
    """
    from sainet.train import TrainRequest, two_stage
    from sainet.train import train as do_train

    def report(r) -> None:  # noqa: ANN001 - TrainResult
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 alone reports
            return
        chosen = {k: v for k, v in r.resolved.items() if k != "overrides"}
        console.print(f"[bold]{r.save_dir}[/]: " + ", ".join(f"{k}={v}" for k, v in chosen.items()))
        m = r.metrics
        console.print(f"  mAP50 {m.get('metrics/mAP50(B)', 0):.4f} (best {m.get('best_mAP50', 0):.4f}), "
                      f"mAP50-95 {m.get('metrics/mAP50-95(B)', 0):.4f}; weights: {r.best}")
        if r.telemetry:
            t = Table(title="loader telemetry (loader.csv)")
            for col in ("epoch", "epoch_s", "data_wait_fraction", "train_img_per_s", "loader_img_per_s"):
                t.add_column(col, justify="right")
            for row in r.telemetry:
                t.add_row(*(str(row[c]) for c in ("epoch", "epoch_s", "data_wait_fraction", "train_img_per_s", "loader_img_per_s")))
            console.print(t)

    def body() -> int:
        req = TrainRequest(data=data or "", loader=loader, model=model, weights=weights, imgsz=imgsz, epochs=epochs,
                           batch=batch, device=device, profile=profile, config=str(config) if config else None,
                           stage=stage, sets=_parse_sets(sets or []), project=project, name=name, threads=threads,
                           prefetch=prefetch, resume=resume, checkpoint_every=checkpoint_every)
        if workflow:
            if workflow != "two-stage":
                raise typer.BadParameter("--workflow takes two-stage")
            if not (stage1_data and stage2_data):
                raise typer.BadParameter("--workflow two-stage needs --stage1-data and --stage2-data")
            r1, r2 = two_stage(req, stage1_data, stage2_data, stage1_epochs=stage1_epochs, stage2_epochs=stage2_epochs)
            report(r1)
            report(r2)
            console.print(f"stage 2 started from {r1.best}")
            return 0
        if not data and not resume:
            raise typer.BadParameter("--data is required (or --workflow two-stage, or --resume RUN/weights/last.pt)")
        report(do_train(req))
        return 0

    _run(body)


# ---------------------------------------------------------------------------------------------- demo


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Working folder for the demo's data and stores.")] = Path("demo"),
    images: Annotated[int, typer.Option(help="Synthetic images to make.")] = 48,
) -> None:
    """Run the main job end to end on embedded synthetic data and summarize what happened:
    synthesize, check, pack (LMDB jpeg, shards jpeg, shards raw), verify, bench-loader, and a brief
    `train --loader dali` on the CPU.

    Example:

        sainet demo --out demo
    """
    import shutil

    from cache_tools import PackOptions, describe_store, verify_store
    from cache_tools import pack as do_pack
    from cache_tools.plan import human_bytes
    from sainet.check import check_dataset
    from sainet.datasets import open_dataset
    from sainet.synth import synthesize

    def body() -> int:
        summary: list[tuple[str, str]] = []
        src = out / "synth"
        t0 = time.perf_counter()
        if src.exists():
            shutil.rmtree(src)
        with progress_bar(images, "synth") as bar:
            result = synthesize(src, images=images, size=(1440, 808), seed=0, progress=bar)
        mb = sum(len(r.jpeg) for r in result) / 1e6
        summary.append(("synth", f"{len(result)} images 1440x808, {mb:.1f} MB JPEG in {time.perf_counter() - t0:.1f}s -> {src}"))
        ds = open_dataset(src)
        with progress_bar(images, "check") as bar:
            report = check_dataset(ds, progress=bar)
        reason = report.unusable_reason()
        summary.append(("check", f"{report.images} images, {report.boxes} boxes, {len(report.problems)} problems"
                        + (f", NOT usable: {reason}" if reason else ", usable")))
        if reason:
            return 1
        for container, mode in (("lmdb", "jpeg"), ("shards", "jpeg"), ("shards", "raw")):
            store = out / "stores" / f"synth-{container}-{mode}"
            opts = PackOptions(container=container, mode=mode, imgsz=(832, 1440) if mode == "raw" else None, force=True)
            with progress_bar(images, f"pack {container} {mode}") as bar:
                r = do_pack(src, store, opts, progress=bar, on_start=bar.start)
            d = describe_store(store)
            v = verify_store(store)
            summary.append((f"pack {container}/{mode}", f"{r.records} records, {human_bytes(r.store_bytes)}, "
                            f"{r.records / r.seconds:.0f} img/s -> {store}; splits {d['splits']}"))
            summary.append((f"verify {container}/{mode}", "ok" if v.ok else f"{len(v.bad)} bad records"))

        from sainet.bench import BenchConfig, run_bench, save_results

        stores = {"lmdb": out / "stores" / "synth-lmdb-jpeg", "shards": out / "stores" / "synth-shards-jpeg",
                  "raw": out / "stores" / "synth-shards-raw"}
        cfg = BenchConfig(stores=stores, source=src, imgsz=(832, 1440), batch=4, seconds=3.0, threads=os.cpu_count() or 2)
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed} img"), console=err) as p:
            def bench_bar(name: str, total: int | None):  # noqa: ANN202
                task = p.add_task(f"bench {name}", total=total)
                return lambda n: p.update(task, advance=n)

            results = run_bench(cfg, ["shm", "lmdb", "dali", "raw-shm", "ultralytics"], progress=bench_bar)
        saved = save_results(results, cfg, out / "bench", "demo-1440x832", None)
        rates = {r.name: r for r in results}
        best = max((r for r in results if r.kind == "loader" and not r.name.startswith("ultralytics")), key=lambda r: r.images_per_s)
        ul = rates.get("ultralytics")
        summary.append(("bench-loader", f"1440x832 augment: best {best.name} {best.images_per_s:.0f} img/s "
                        f"({best.ratios.get('vs_work-minimum', 0):.2f}x work-minimum"
                        + (f", {best.ratios.get('vs_ultralytics', 0):.2f}x Ultralytics {ul.images_per_s:.0f} img/s" if ul and ul.images_per_s else "")
                        + f") -> {saved}"))
        from sainet.train import TrainRequest
        from sainet.train import train as do_train

        r = do_train(TrainRequest(data=str(out / "stores" / "synth-shards-jpeg"), loader="dali", model="yolov8n.yaml",
                                  imgsz=320, epochs=2, batch=8, device="cpu", profile="cpu", project=str(out / "runs"),
                                  name="demo-dali", sets={"exist_ok": True, "plots": False}))
        summary.append(("train dali", f"2 epochs yolov8n 320 on CPU: mAP50 {r.metrics.get('metrics/mAP50(B)', 0):.3f}, "
                        f"data wait {r.telemetry[-1]['data_wait_fraction'] if r.telemetry else 0:.1%} -> {r.save_dir}"))
        t = Table(title="sainet demo")
        t.add_column("step")
        t.add_column("result", overflow="fold")
        for step, text in summary:
            t.add_row(step, text)
        console.print(t)
        return 0

    _run(body)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
