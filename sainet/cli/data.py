"""Dataset and store commands: synth, check, pack, inspect, verify, export.

New pack options (several SRC, --classes, --drop-leaks) go into `pack` below: add the parameter
with a help string and a type that rejects bad values, and pass it into `PackOptions`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from sainet.cli._app import (
    Container,
    Layout,
    Mode,
    app,
    bytes_type,
    class_ids_type,
    console,
    err,
    imgsz_type,
    progress_bar,
    run,
    size_type,
)
from sainet.core.errors import SettingsError
from sainet.core.safepath import output_dir, printable
from sainet.settings import default_threads
from sainet.synth import FASDD_SUBSETS, SYNTH_LAYOUTS

_SynthLayout = Literal[SYNTH_LAYOUTS]  # type: ignore[valid-type]
_Subset = Literal[tuple(FASDD_SUBSETS)]  # type: ignore[valid-type]


def _synth_checks(out: Path, size: tuple[int, int], images: int, classes: str | None, layout: str,
                  as_zip: bool) -> list[str] | None:
    """What `synth` refuses before a pixel is drawn; returns the class names given."""
    from sainet.budget import check_synth

    output_dir(out, "synth folder", error=SettingsError)  # never /, a system folder or a store
    check_synth(size, images)  # exit 5 before a pixel is allocated
    if as_zip and layout != "fasdd":
        raise SettingsError(f"--zip writes FASDD's archive shape; not for --layout {layout}", "--zip")
    return [c.strip() for c in classes.split(",") if c.strip()] if classes is not None else None


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    images: Annotated[int, typer.Option("--images", "-n", min=1, help="Number of images.")] = 64,
    size: Annotated[Any, typer.Option(parser=size_type, metavar="WxH", help="WIDTHxHEIGHT of every image.")] = "1440x808",  # type: ignore[assignment]
    classes: Annotated[str | None, typer.Option(help="Comma-separated classes from fire and smoke; the order sets the ids. Default fire,smoke (smoke for pyrosdis).")] = None,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.99, help="Fraction of images in the val split.")] = 0.2,
    background: Annotated[float, typer.Option(min=0.0, max=1.0, help="Fraction of images with no object.")] = 0.1,
    layout: Annotated[_SynthLayout, typer.Option(help="Layout to write.")] = "yolo",  # type: ignore[assignment]
    seed: Annotated[int, typer.Option(min=0, help="Random seed: same seed, same bytes.")] = 0,
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality.")] = 90,
    subset: Annotated[_Subset, typer.Option(help="fasdd: the FASDD subset shape (RS: TIFF).")] = "CV",
    test_fraction: Annotated[float | None, typer.Option(min=0.0, max=0.99, help="Fraction in the test split (default 0.15 for fasdd, else 0).")] = None,
    clean: Annotated[bool, typer.Option(help="fasdd/pyrosdis: without the published datasets' quirks (duplicates, leaks, bad boxes).")] = False,
    as_zip: Annotated[bool, typer.Option("--zip", help="fasdd: write OUT as the zip archive FASDD is downloaded as (OUT.zip when OUT does not end in .zip), for `sainet pack OUT.zip`.")] = False,
) -> None:
    """Write a deterministic synthetic wildfire dataset (smoke plumes, fire, exact boxes).

    The fasdd and pyrosdis layouts are shaped like the published datasets, quirks included
    (see sainet.synth.PLANTED for the exact numbers).

    Examples:

    * `sainet synth data/synth --images 200`
    * `sainet synth data/pyro --classes smoke --layout pyrosdis --size 1280x720`
    * `sainet synth data/FASDD_RS --layout fasdd --subset RS --size 640x640`
    * `sainet synth data/FASDD_CV.zip --layout fasdd --zip` (an archive for pack, as downloaded)
    """
    import shutil
    import tempfile

    from sainet.synth import synthesize, write_zip

    def body() -> None:
        names = _synth_checks(out, size, images, classes, layout, as_zip)
        archive = out if out.suffix.lower() == ".zip" else out.with_name(out.name + ".zip")
        if as_zip:
            archive.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=".synth-", dir=archive.parent)) if as_zip else out
        try:
            with progress_bar(images, "synth") as advance:
                result = synthesize(folder, images=images, size=size, classes=names, val_fraction=val_fraction,
                                    background=background, layout=layout, seed=seed, quality=quality, progress=advance,
                                    subset=subset, test_fraction=test_fraction, quirks=False if clean else None)
            if as_zip:
                write_zip(folder, archive)
        except ValueError as e:  # the ranges were checked by the option types: classes or a fraction mix
            raise SettingsError(str(e), "--classes" if "class" in str(e) else None) from None
        finally:
            if as_zip:
                shutil.rmtree(folder, ignore_errors=True)
        nbytes = sum(len(r.jpeg) for r in result)
        boxes = sum(len(r.objects) for r in result)
        console.print(f"wrote {len(result)} images ({nbytes / 1e6:.1f} MB, {nbytes / len(result) / 1e3:.0f} KB/img), "
                      f"{boxes} boxes, layout {layout} -> {archive if as_zip else out}")

    run(body)


def _print_check(report: Any, max_problems: int) -> None:
    t = Table(title=f"{report.layout} dataset {report.source} (per class: boxes/images)")
    for col in ("split", "images", "boxes", "backgrounds", "bad images", *report.names):
        t.add_column(col, justify="left" if col == "split" else "right")
    for sp, st in report.splits.items():
        t.add_row(sp, str(st.images), str(st.boxes), str(st.backgrounds), str(st.bad_images),
                  *(f"{st.per_class[n]}/{st.images_per_class[n]}" for n in report.names))
    console.print(t)
    if not report.problems:
        console.print("no problems found")
    else:
        _print_problems(report, max_problems)
    _print_dataset_facts(report.notes, report.tally.as_dict(), report.duplicates.summary())


def _print_problems(report: Any, max_problems: int) -> None:
    counts = ", ".join(f"{k}: {v}" for k, v in report.problem_counts().items())
    pt = Table(title=f"{len(report.problems)} problems {counts}")
    for col in ("severity", "kind", "path", "detail"):
        pt.add_column(col, overflow="fold")
    for p in report.problems[:max_problems]:
        pt.add_row(p.severity.name.lower(), p.kind.value, p.path, p.detail)
    console.print(pt)
    if len(report.problems) > max_problems:
        console.print(f"... {len(report.problems) - max_problems} more (use --json for all)")


@app.command()
def check(
    src: Annotated[Path, typer.Argument(help="Dataset folder, data.yaml or parquet shard.")],
    layout: Annotated[Layout | None, typer.Option(help="Source layout (default: detect).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    strict: Annotated[bool, typer.Option(help="Exit 1 on warnings too (dropped boxes, bad images, orphan labels, class ids past a gap).")] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="Decode threads (default: the cores, at most 8).")] = None,
    max_problems: Annotated[int, typer.Option(min=0, help="Problems listed in the table.")] = 50,
    class_ids: Annotated[Any, typer.Option(parser=class_ids_type, metavar="ID=NAME,...", help="pyrosdis: the annotations' class ids, e.g. 1=smoke (default: detected).")] = None,
) -> None:
    """Validate a dataset without changing it: counts per split and class, and every problem with its file.

    Also says where every box went (kept, clipped, dropped: nothing is lost), exact-duplicate images
    within and across splits (leakage), and facts about the dataset (e.g. 1-based class ids).

    Also reports images without a label file (counted as backgrounds, in a note with examples), label
    files without an image (a warning each), and, without data.yaml or classes.txt, a class id past a
    gap (5 in a set using 0 and 1: a warning, not a sixth class taken silently).

    Exit code: **0** usable, warnings included (dropped or clipped boxes, bad images left out, orphan
    labels, duplicates: listed, not fatal); **1** not usable (an error: no images, no train split, an
    unreadable annotation file), or with `--strict` any warning; **2** the dataset cannot be read at all.

    Examples:

    * `sainet check datasets/FASDD_CV`
    * `sainet check data/pyro --layout pyrosdis --json > report.json`
    """
    from sainet.core.check import check_dataset
    from sainet.core.datasets import open_dataset

    def body() -> int:
        ds = open_dataset(src, layout, class_ids)
        with progress_bar(None, f"check {ds.layout}") as advance:
            report = check_dataset(ds, threads=threads or default_threads(), progress=advance)
        if as_json:
            print(json.dumps(report.as_dict(), indent=2))
        else:
            _print_check(report, max_problems)
        reason = _reason(report, strict)
        if reason:
            err.print(f"[red]not usable:[/] {reason}", soft_wrap=True)
            return 1
        if not as_json:
            console.print(f"[green]usable:[/] {report.images} images, {report.boxes} boxes, {len(report.names)} classes")
        return 0

    run(body)


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


def _reason(report: Any, strict: bool) -> str | None:
    """Why the dataset is not usable; with `strict`, warnings count too."""
    from sainet.core.datasets import Severity

    reason = report.unusable_reason()
    if reason is None and strict:
        warn = [p for p in report.problems if p.severity >= Severity.WARNING]
        if warn:
            reason = f"{len(warn)} warnings (--strict), first: {warn[0].path}: {warn[0].detail}"
    return reason


@app.command()
def pack(
    src: Annotated[list[Path], typer.Argument(help="Source dataset(s) (any layout `sainet check` reads); several are combined, classes unified by name.")],
    to: Annotated[Path, typer.Option("--to", help="Store to create, e.g. /dev/shm/fasdd.")],
    fmt: Annotated[Container | None, typer.Option("--format", help="Container (default: shards on tmpfs, lmdb elsewhere).")] = None,
    mode: Annotated[Mode, typer.Option(help="jpeg (original bytes) or raw (decoded, letterboxed frames).")] = "jpeg",  # type: ignore[assignment]
    imgsz: Annotated[Any, typer.Option(parser=imgsz_type, metavar="WxH|N", help="raw mode: training shape, WIDTHxHEIGHT or N (padded to stride 32).")] = "1440x808",  # type: ignore[assignment]
    max_size: Annotated[int | None, typer.Option(min=32, help="jpeg mode: re-encode images whose long side exceeds this many pixels.")] = None,
    layout: Annotated[Layout | None, typer.Option(help="Source layout (default: detect).")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Decode threads (default: the cores, at most 8).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted pack of the same source and settings.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing store (swapped in only when the new one is complete).")] = False,
    shard_size: Annotated[Any, typer.Option(parser=bytes_type, metavar="SIZE", help="shards: target shard file size, e.g. 1GiB.")] = "1GiB",  # type: ignore[assignment]
    assume_free: Annotated[Any, typer.Option(parser=bytes_type, metavar="SIZE", help="Plan against this much free space instead of the measured figure.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    classes: Annotated[str | None, typer.Option(help="Keep these classes only, by name and in this order, e.g. smoke.")] = None,
    drop_leaks: Annotated[bool, typer.Option(help="Leave out train images whose bytes also appear in val or test.")] = False,
    class_ids: Annotated[Any, typer.Option(parser=class_ids_type, metavar="ID=NAME,...", help="pyrosdis: the annotations' class ids, e.g. 1=smoke (default: detected).")] = None,
) -> None:
    """Pack a dataset into an LMDB or shard store, after checking that it fits.

    Every image is decoded once; corrupt ones are reported and left out. The store appears
    atomically when complete; an interrupted pack is resumed with --resume.

    Examples:

    * `sainet pack datasets/FASDD_CV --to /dev/shm/fasdd`
    * `sainet pack data/synth --to stores/synth-raw --mode raw --imgsz 1440x808 --format lmdb`
    * `sainet pack datasets/FASDD_CV --to /dev/shm/fasdd --resume`
    * `sainet pack datasets/FASDD_CV datasets/FASDD_UAV datasets/FASDD_RS --to /dev/shm/fasdd --drop-leaks`
    * `sainet pack datasets/pyro-sdis --to /dev/shm/pyro --classes smoke`
    """
    from cache_tools.pack import PackOptions
    from cache_tools.pack import pack as do_pack

    def body() -> int:
        opts = PackOptions(container=fmt, mode=mode, imgsz=imgsz if mode == "raw" else None, max_size=max_size,
                           layout=layout, threads=threads or default_threads(), resume=resume, force=force,
                           shard_size=shard_size, free_bytes=assume_free, drop_leaks=drop_leaks, class_ids=class_ids,
                           classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None)
        try:
            with progress_bar(None, "pack") as bar:
                report = do_pack(src, to, opts, progress=bar, on_start=bar.start)
        except KeyboardInterrupt:
            _say_partial(to)
            raise
        _print_pack(report, as_json, max_size)
        return 0

    run(body)


def _say_partial(to: Path) -> None:
    """After Ctrl-C: where the unfinished pack is (on tmpfs it holds RAM) and the two ways on."""
    from cache_tools.target import partial_path

    part = partial_path(Path(to))
    if part.exists():
        err.print(f"the unfinished pack is kept in {part}: `--resume` continues it, `rm -r {part}` frees its space")


def _print_pack(report: Any, as_json: bool, max_size: int | None) -> None:
    from cache_tools.plan import human_bytes

    if as_json:
        print(json.dumps({
            "store": str(report.store), "container": report.container, "mode": report.mode,
            "records": report.records, "left_out": report.bad, "reencoded": report.reencoded,
            "resumed": report.resumed, "payload_bytes": report.payload_bytes, "store_bytes": report.store_bytes,
            "seconds": round(report.seconds, 3), "annotation_problems": [p.as_dict() for p in report.problems],
            "boxes": report.boxes, "dropped_leaks": report.dropped_leaks, "notes": report.notes,
        }, indent=2))
        return
    console.print(f"packed {report.records} images into {report.store} ({report.container}, {report.mode}): "
                  f"{human_bytes(report.store_bytes)} in {report.seconds:.1f}s "
                  f"({report.records / max(report.seconds, 1e-9):.0f} img/s)"
                  + (f", resumed after {report.resumed}" if report.resumed else ""))
    if report.reencoded:
        why = f"larger than --max-size {max_size}" if max_size else "not JPEG (e.g. TIFF, PNG): stored as JPEG"
        console.print(f"[yellow]re-encoded[/] {report.reencoded} images {why}")
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


@app.command()
def inspect(
    store: Annotated[Path, typer.Argument(help="Store folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Describe a store: format, version, mode, imgsz, per-split counts, classes, bytes.

    Examples:

    * `sainet inspect /dev/shm/fasdd`
    * `sainet inspect stores/synth-raw --json`
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
            ("store id", str(d["store_id"] or "-")), ("left out", str(d["left_out"])), ("re-encoded", str(d["reencoded"])),
        ]:
            t.add_row(k, v)
        console.print(t)

    run(body)


@app.command()
def verify(
    store: Annotated[Path, typer.Argument(help="Store folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="Checksum threads (default: the cores, at most 8).")] = None,
) -> None:
    """Check a store's index, structure and every record's checksum; exit 1 naming each bad record.

    Examples:

    * `sainet verify /dev/shm/fasdd`
    * `sainet verify stores/synth-raw --json`
    """
    from cache_tools.verify import verify_store

    def body() -> int:
        with progress_bar(None, "verify") as bar:
            report = verify_store(store, threads=threads or default_threads(), progress=bar)
        if as_json:
            print(json.dumps(report.as_dict(), indent=2))
        elif report.ok:
            console.print(f"[green]ok:[/] {report.checked} records verified in {store}")
        for b in report.bad:
            err.print(f"[red]bad record {b['record']}[/] {b['name']}: {b['reason']}", soft_wrap=True)
        return 0 if report.ok else 1

    run(body)


@app.command()
def export(
    store: Annotated[Path, typer.Argument(help="Store folder.")],
    to: Annotated[Path, typer.Option("--to", help="Folder for the YOLO dataset.")],
    force: Annotated[bool, typer.Option(help="Write into a non-empty folder.")] = False,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Leave out records whose payload is damaged (listed) instead of refusing.")] = False,
) -> None:
    """Write a store back out as an Ultralytics YOLO folder with data.yaml (jpeg stores: byte-identical images).

    Every payload's checksum is checked first: a damaged record stops the export (exit 4, naming
    the records) unless `--skip-bad` leaves it out.

    Examples:

    * `sainet export /dev/shm/fasdd --to exported/fasdd`
    * `sainet check exported/fasdd`
    """
    from cache_tools.export import export_store

    def body() -> None:
        with progress_bar(None, "export") as bar:
            skipped: list[dict] = []
            n = export_store(store, to, force=force, skip_bad=skip_bad, skipped=skipped, progress=bar)
        for b in skipped:
            console.print(f"left out record {b['record']} ({printable(b['name'])}): {printable(b['reason'])}", markup=False)
        console.print(f"exported {n} images to {to} (data.yaml)" + (f", {len(skipped)} damaged left out" if skipped else ""))

    run(body)
