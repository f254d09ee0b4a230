"""Host and memory commands: profile, plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sainet.cli._app import PROFILE_HELP, Layout, app, bytes_type, console, imgsz_type, run


@app.command()
def plan(
    source: Annotated[str | None, typer.Option("--source", help="Dataset folder, or a description N@WxH[:avgKB] (e.g. 122634@1440x808:180KB, FASDD CV+UAV+RS).")] = None,
    store: Annotated[Path | None, typer.Option("--store", help="An existing store.")] = None,
    profile: Annotated[str, typer.Option(help=f"{PROFILE_HELP}; auto plans for this host as measured.")] = "auto",
    imgsz: Annotated[Any, typer.Option(parser=imgsz_type, metavar="WxH|N", help="Training shape, WIDTHxHEIGHT or N.")] = "1440x808",  # type: ignore[assignment]
    batch: Annotated[int | None, typer.Option(min=1, help="Batch per GPU (default: the profile's).")] = None,
    model: Annotated[str, typer.Option(help="Model, for the VRAM estimate.")] = "yolov8s.yaml",
    to: Annotated[Path | None, typer.Option("--to", help="Also check this target filesystem for the store.")] = None,
    layout: Annotated[Layout | None, typer.Option(help="Source layout (default: detect).")] = None,
    assume_free: Annotated[Any, typer.Option(parser=bytes_type, metavar="SIZE", help="With --to: plan against this much free space.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Print the memory budget of a store and a training run against a hardware profile, and what fits.

    Store bytes per mode (jpeg / raw), loader buffers (sainet's, and Ultralytics' workers and
    cache=ram per rank), the decoded batch (every image's header is read), the model's training
    memory (activations for the shape and batch, on the GPU, or in RAM on a CPU-only host), against
    the profile's RAM, /dev/shm and VRAM. Exits 5 when the run (or the store at --to) does not fit,
    naming the batch, loader and mode that would.

    Examples:

    * `sainet plan --profile h200 --source 122634@1440x808:180KB   # FASDD CV + UAV + RS`
    * `sainet plan --profile a10g --source 33636@1280x720:100KB   # PyroSDIS, train + val`
    * `sainet plan --source datasets/FASDD_CV --to /dev/shm/fasdd`
    * `sainet plan --store /dev/shm/fasdd --profile a10g --batch 12 --json`
    * `sainet plan --profile my-host.yaml --source 33636@1280x720:100KB`
    """
    from cache_tools.plan import human_bytes
    from sainet.budget import estimate_source, plan_memory

    def body() -> None:
        prof = _plan_profile(profile)
        est, decode = estimate_source(source, store, imgsz, layout)
        p = plan_memory(est, prof, imgsz, batch=batch, model=model, decode=decode, to=to, assume_free=assume_free)
        if as_json:
            print(json.dumps(p.as_dict(), indent=2))
            if not p.fits:
                raise p.refusal()
            return
        t = Table(title=f"memory plan: {p.images} images, {imgsz[1]}x{imgsz[0]}, batch {p.batch}, profile {prof.name} "
                        f"({prof.ram_gb:.0f} GB RAM, {prof.shm_gb:.0f} GB shm, {prof.gpus}x{prof.vram_gb:.0f} GB GPU)")
        for col in ("item", "bytes", "host RAM (page cache)", "/dev/shm"):
            t.add_column(col, overflow="fold")
        for r in p.rows:
            t.add_row(r["item"], human_bytes(r["bytes"]), r["host RAM (page cache)"], r["/dev/shm"])
        console.print(t)
        console.print(f"VRAM per GPU (estimate, {model}): {p.vram}")
        for m, v in (p.target or {}).get("verdicts", {}).items():
            console.print(f"{m} store at {to}: {v}", soft_wrap=True)
        console.print(f"[bold]recommendation:[/] {p.recommendation}")
        if not p.fits:
            raise p.refusal()

    run(body)


def _plan_profile(name: str) -> Any:
    """``auto``: this host as measured (what `sainet profile` shows); else a profile by name or file."""
    from sainet.profiles import choose_profile, detect_host, host_profile

    return host_profile(detect_host()) if name == "auto" else choose_profile(name)


@app.command()
def profile(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Detect this host (GPUs and VRAM, RAM, cores, /dev/shm) and name the nearest hardware profile.

    Examples:

    * `sainet profile`
    * `sainet profile --json`
    """
    from sainet.budget import recommend
    from sainet.profiles import detect_host, host_profile, nearest_profile

    def body() -> None:
        host = detect_host()
        prof, dist = nearest_profile(host)
        rec = recommend(host_profile(host, prof))
        doc = {"host": host.as_dict(), "profile": prof.name, "distance": round(dist, 3), "recommended": rec.as_dict()}
        if as_json:
            print(json.dumps(doc, indent=2))
            return
        gpus = ", ".join(host.gpu_names) or "none"
        console.print(f"host: {host.cores} cores, {host.ram_gb:.1f} GB RAM ({host.ram_available_gb:.1f} available), "
                      f"GPUs: {gpus} ({host.vram_gb:.0f} GB each), /dev/shm {host.shm_gb:.1f} GB ({host.shm_free_gb:.1f} free)")
        fits = f" (for a store that fits its {host.shm_gb:.0f} GB /dev/shm; `sainet plan` checks yours)" if rec.where == "/dev/shm" else ""
        console.print(f"nearest profile: [bold]{prof.name}[/] ({prof.description}); recommended{fits}: "
                      + ", ".join(f"{k}={v}" for k, v in rec.as_dict().items() if k not in ("fits", "problem")))

    run(body)
