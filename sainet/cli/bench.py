"""`sainet bench-loader`: the CLI side of sainet.bench (parse, resolve the settings, print the table)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sainet.cli._app import PROFILE_HELP, app, bar_factory, console, imgsz_type, key_value_type, run
from sainet.core.errors import SettingsError
from sainet.core.geometry import format_imgsz
from sainet.settings import BENCH_NAMES as _KNOWN


def _loader_list(text: str) -> list[str]:
    names = [x.strip() for x in str(text).split(",") if x.strip()]
    unknown = [n for n in names if n not in _KNOWN]
    if unknown or not names:
        raise typer.BadParameter(f"unknown backend(s) {', '.join(unknown) or '(none given)'}; choose from {','.join(_KNOWN)}")
    return names


def print_bench_table(results: list[Any], cfg: Any, profile_name: str) -> None:
    """The bench-loader table (also printed at the end of `sainet demo`)."""
    from sainet.bench import headline

    t = Table(title=f"bench-loader {format_imgsz(cfg.imgsz)} batch {cfg.batch} {'augment' if cfg.augment else 'no augment'}, "
                    f"{cfg.threads} threads, profile {profile_name}")
    cols = ("backend", "shape", "decodes/img", "img/s", "Mpx/s", "p50 ms", "p99 ms", "CPU %", "CPU ms/img", "PSS MB",
            "anon MB", "store MB", "GIL %", "serial %", "ceiling", "x decode", "x work-min", "x work-min CPU", "x ultralytics")
    for col in cols:
        t.add_column(col, justify="left" if col == "backend" else "right")

    def f(v: float | None, fmt: str = "{:.1f}") -> str:
        return "-" if v is None else fmt.format(v)

    for r in results:
        # ratios to Ultralytics: images/s between equal shapes, megapixels/s ("Mpx") otherwise
        ul = f(r.ratios.get("vs_ultralytics"), "{:.2f}")
        if "mpx_vs_ultralytics" in r.ratios:
            ul = f"{r.ratios['mpx_vs_ultralytics']:.2f} Mpx"
        t.add_row(r.name, r.out_shape or "source", f(r.decodes_per_image, "{:g}"), f(r.images_per_s), f(r.megapixels_per_s),
                  f(r.p50_ms), f(r.p99_ms), f(r.cpu_percent, "{:.0f}"), f(r.cpu_ms_per_image), f(r.pss_mb), f(r.pss_anon_mb), f(r.pss_store_mb),
                  f(None if r.gil_share is None else 100 * r.gil_share),
                  "-" if r.serial_share is None else f"{100 * r.serial_share:.1f} {r.serial_basis.split(' ')[0]}", f(r.amdahl_ceiling, "{:.1f}x"),
                  f(r.ratios.get("vs_decode"), "{:.2f}"), f(r.ratios.get("vs_work-minimum"), "{:.2f}"),
                  f(r.ratios.get("cpu_vs_work-minimum"), "{:.2f}"), ul)
    console.print(t)
    for note in dict.fromkeys(f"{r.name}: {r.note}" for r in results if r.note):
        console.print(note)
    for note in dict.fromkeys(f"GIL share not measured: {r.gil_note}" for r in results if r.gil_note):
        console.print(note)
    console.print(headline(results))


def _check_outputs(out: Path, tag: str | None, store: Path | None, source: Path | None, work: Path, plot: Path | None) -> None:
    """Before the run: the results, work and chart folders (sainet.core.safepath.output_dir) and the tag
    as a plain file name."""
    from sainet.core.errors import SettingsError
    from sainet.core.safepath import enclosing_store, output_dir, plain_child

    sources = tuple(p for p in (store, source) if p)
    output_dir(out, "--out", sources=sources, error=SettingsError)
    output_dir(work, "--work", sources=sources, error=SettingsError)
    if plot is not None and enclosing_store(plot.parent) is not None:
        raise SettingsError(f"--plot {plot} lies inside the sainet store {enclosing_store(plot.parent)}")
    if tag is not None:
        plain_child(out, tag, "--tag", error=SettingsError)


def _checked_settings(sets: list | None, profile: str, imgsz: tuple[int, int], batch: int | None,
                     threads: int | None) -> tuple[dict[str, Any], Any]:
    """The bench's augment settings and profile, checked before any store is packed: `--set` keys and
    values (exit 2), and the loader buffers against this host's memory (exit 5)."""
    from sainet.budget import check_loader_memory
    from sainet.profiles import choose_profile
    from sainet.validate import check_hyp

    hyp = check_hyp([("--set", dict(sets or []))], sainet_loader=True)
    prof = choose_profile(profile)
    check_loader_memory("bench-loader", imgsz, prof, batch=batch, threads=threads)
    return hyp, prof


@app.command("bench-loader")
def bench_loader(
    store: Annotated[Path | None, typer.Option(help="A store to benchmark (its source is used for disk/ultralytics).")] = None,
    source: Annotated[Path | None, typer.Option(help="A dataset folder: the stores are packed from it once.")] = None,
    loaders: Annotated[Any, typer.Option(parser=_loader_list, metavar="NAMES", help=f"Comma-separated backends from {','.join(_KNOWN)}.")] = "disk,ram,shm,lmdb,dali,ultralytics",  # type: ignore[assignment]
    imgsz: Annotated[Any, typer.Option(parser=imgsz_type, metavar="WxH|N", help="Training shape, WIDTHxHEIGHT or N.")] = "1440x808",  # type: ignore[assignment]
    batch: Annotated[int | None, typer.Option(min=1, help="Batch size (default: the profile's).")] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Full train augmentation, or eval letterbox only.")] = True,
    seconds: Annotated[float, typer.Option(min=0.1, help="Seconds measured per backend (after warm-up).")] = 10.0,
    batches: Annotated[int | None, typer.Option(min=1, help="Batches measured per backend (instead of --seconds).")] = None,
    cold: Annotated[bool, typer.Option(help="Evict the files' pages first (posix_fadvise), so reads are real.")] = False,
    gil: Annotated[bool, typer.Option("--gil/--no-gil", help="Sample how long the bench's process holds its GIL (py-spy, sainet[bench]).")] = True,
    raw: Annotated[bool, typer.Option(help="Also pack a raw store and measure the raw-copy reference.")] = False,
    profile: Annotated[str, typer.Option(help=f"{PROFILE_HELP}: threads, prefetch, workers, batch.")] = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="Decode threads (default: the profile's, at most the cores).")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Ultralytics DataLoader workers (default: the threads).")] = None,
    work: Annotated[Path, typer.Option(help="Where stores packed from --source are kept.")] = Path(".cache/bench"),
    out: Annotated[Path, typer.Option(help="Results folder, a subfolder per profile (default runs/bench, Ultralytics' runs/ convention; the recorded results live in benchmarks/results).")] = Path("runs/bench"),
    tag: Annotated[str | None, typer.Option(help="Name of the saved result (default: imgsz-aug-time).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Also write the chart here.")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Rounds over all backends (round-robin); figures are medians.")] = 1,
    sets: Annotated[list[str] | None, typer.Option("--set", parser=key_value_type, metavar="KEY=VALUE", help="Augmentation hyp key=value (Ultralytics names) for every backend; default mixup=0.15.")] = None,
) -> None:
    """Measure every loader backend side by side with Ultralytics' own, against decode and work-minimum references.

    Ratios to Ultralytics are images/s only between equal output shapes (its train loader is square);
    a rectangular shape is compared in megapixels/s (marked "Mpx").

    Examples:

    * `sainet bench-loader --source data/synth --imgsz 1440x808`
    * `sainet bench-loader --store /dev/shm/fasdd --loaders shm,dali,ultralytics --no-augment --json`
    * `sainet bench-loader --source data/synth --imgsz 640 --raw --loaders shm,raw-shm --cold`
    * `sainet bench-loader --source data/synth --imgsz 640 --loaders lmdb-mp,raw-lmdb-mp,ultralytics,ultralytics-ram`
    """
    from sainet.bench import bench_config, prepare_stores, run_bench, save_results

    def body() -> int:
        if store is None and source is None:
            raise SettingsError("give --store or --source")
        _check_outputs(out, tag, store, source, work, plot)
        hyp, prof = _checked_settings(sets, profile, imgsz, batch, threads)
        raw_shm, raw_lmdb = (any(n in loaders for n in (f"raw-{k}", f"raw-{k}-mp")) for k in ("shm", "lmdb"))
        stores, src = prepare_stores(source, store, work, imgsz, raw or raw_shm, raw_lmdb)
        cfg = bench_config(stores=stores, source=src, imgsz=imgsz, profile=prof, batch=batch, augment=augment,
                           seconds=seconds, batches=batches, threads=threads, workers=workers, cold=cold,
                           repeats=repeats, hyp=hyp, scratch=work, gil=gil)
        with bar_factory() as bar:
            results = run_bench(cfg, loaders, progress=bar)
        run_tag = tag or f"{format_imgsz(imgsz)}-{'aug' if augment else 'noaug'}-{time.strftime('%Y%m%d-%H%M%S')}"
        saved = save_results(results, cfg, out / prof.name, run_tag, plot)
        if as_json:
            print(saved.read_text())
        else:
            print_bench_table(results, cfg, prof.name)
            console.print(f"saved {saved} and its chart")
        return 0

    run(body)
