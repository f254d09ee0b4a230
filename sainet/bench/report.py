"""Shaping and reporting results: what each row produced, ratios within a round, medians over
rounds, the demo's headline, the JSON record and the bar chart."""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from sainet.bench.results import REFERENCES, BenchConfig, BenchResult
from sainet.core.geometry import format_imgsz
from sainet.core.safepath import plain_child


def hyp_text(cfg: BenchConfig) -> str:
    from loaders.augment.hyp import Hyp

    if not cfg.augment:
        return "letterbox only"
    h = Hyp.from_dict(cfg.hyp)
    return (f"mosaic={h.mosaic:g} mixup={h.mixup:g} hsv={h.hsv_h:g}/{h.hsv_s:g}/{h.hsv_v:g} fliplr={h.fliplr:g} "
            f"flipud={h.flipud:g} translate={h.translate:g} scale={h.scale:g} degrees={h.degrees:g} shear={h.shear:g}")

def describe(r: BenchResult, cfg: BenchConfig) -> None:
    """Fill in what each row produced: output shape, pixels per batch, decodes per output image,
    augment settings, megapixels/s."""
    from loaders.augment.hyp import Hyp

    hw = cfg.imgsz
    if r.name == "decode":
        r.out_shape, r.decodes_per_image, r.augment = None, 1.0, "none (decode only)"
    elif r.kind == "reference":
        r.decodes_per_image = 0.0 if r.name == "raw-copy" else 1.0
        r.augment = "letterbox resample" if r.name == "work-minimum" else "none (frame copy)"
    elif r.name.startswith("ultralytics"):
        hw = (max(cfg.imgsz), max(cfg.imgsz))  # Ultralytics' train loader (rect=False) is square
        h = Hyp.from_dict(cfg.hyp)
        # Without a RAM cache, Ultralytics' Mosaic draws its 3 partners from each worker's buffer of the
        # last min(n, 8 x batch, 1000) images it loaded, kept decoded (BaseDataset.buffer): no decode.
        # MixUp's partner comes from the whole dataset: one decode (its own mosaic partners: the buffer).
        # With cache="ram" the buffer is off and every partner is a cached image.
        cached = (4 * h.mosaic + 1 - h.mosaic) * (1 + h.mixup) if cfg.augment else 1.0
        r.decodes_per_image = 0.0 if r.name == "ultralytics-ram" else (1 + h.mixup if cfg.augment else 1.0)
        r.augment = hyp_text(cfg)
        if r.name == "ultralytics-ram":
            r.note = (r.note + "; " if r.note else "") + f"{cached:g} cached decoded images per output image"
        elif cfg.augment:
            r.note = (r.note + "; " if r.note else "") + ("mosaic partners from each worker's buffer of recently "
                                                          "loaded images, kept decoded")
    else:
        r.decodes_per_image = 0.0 if r.name.startswith("raw-") else 1.0
        r.augment = hyp_text(cfg)
        if cfg.augment:
            each = "no decode (raw frames read from the store)" if r.name.startswith("raw-") else "one decode per output image"
            r.note = (r.note + "; " if r.note else "") + ("mosaic partners from the batch and its recent batches' samples, "
                                                          f"mixup partners from the batch: {each}")
    if r.name != "decode":
        r.out_shape = format_imgsz(hw)
        r.pixels_per_batch = cfg.batch * hw[0] * hw[1]
        if r.images_per_s > 0:
            r.megapixels_per_s = r.images_per_s * hw[0] * hw[1] / 1e6

def fill_ratios(results: list[BenchResult]) -> None:
    """Ratios from figures of the same round: images/s between equal output shapes (or to decode,
    whose output is the source itself), megapixels/s (`mpx_vs_*`) between different ones.

    `cpu_vs_*`: the same comparison in CPU time per output image (the other's over this one's).
    On a host shared with other work, wall-clock rates swing with the load (a tight reference loop
    most of all) while CPU time per image barely moves, so this is the robust efficiency figure;
    it says nothing about how well a backend spreads over the cores (CPU % does)."""
    by = {r.name: r for r in results if r.images_per_s > 0}
    for r in results:
        if r.images_per_s <= 0:
            continue
        for ref in (*REFERENCES, "ultralytics"):
            other = by.get(ref)
            if other is None or other is r:
                continue
            if ref == "decode" or r.out_shape == other.out_shape:
                r.ratios[f"vs_{ref}"] = r.images_per_s / other.images_per_s
                if r.cpu_ms_per_image and other.cpu_ms_per_image:
                    r.ratios[f"cpu_vs_{ref}"] = other.cpu_ms_per_image / r.cpu_ms_per_image
            elif r.megapixels_per_s and other.megapixels_per_s:
                r.ratios[f"mpx_vs_{ref}"] = r.megapixels_per_s / other.megapixels_per_s

def merge_rounds(rounds: list[list[BenchResult]]) -> list[BenchResult]:
    """One row per backend: medians over the rounds (peak memory: the largest), each round's images/s kept."""
    if len(rounds) == 1:
        for r in rounds[0]:
            r.repeats = [r.images_per_s]
        return rounds[0]
    out = []
    for rows in zip(*rounds, strict=True):
        ok = [r for r in rows if r.images_per_s > 0]
        first = rows[0]
        if not ok:
            out.append(first)
            continue

        def med(key: str, rs: list[BenchResult] = ok) -> float | None:
            vals = [getattr(r, key) for r in rs if getattr(r, key) is not None]
            return statistics.median(vals) if vals else None

        peak = lambda key, rs=ok: max((getattr(r, key) for r in rs if getattr(r, key) is not None), default=None)  # noqa: E731
        m = BenchResult(first.name, first.kind, med("images_per_s"), sum(r.batches for r in ok), sum(r.images for r in ok),
                        sum(r.seconds for r in ok), med("p50_ms"), med("p99_ms"), med("cpu_percent"), peak("pss_mb"),
                        peak("pss_anon_mb"), note=first.note, out_shape=first.out_shape, pixels_per_batch=first.pixels_per_batch,
                        decodes_per_image=first.decodes_per_image, augment=first.augment, megapixels_per_s=med("megapixels_per_s"),
                        repeats=[r.images_per_s for r in rows], cpu_ms_per_image=med("cpu_ms_per_image"),
                        pss_store_mb=peak("pss_store_mb"), gil_share=med("gil_share"))
        # the serial share's median over the rounds of the basis most of them had (a loader near the
        # threads/processes line could have both); why the GIL went unmeasured, only when it did
        bases = [r.serial_basis for r in ok if r.serial_share is not None]
        if bases:
            m.serial_basis = max(set(bases), key=bases.count)
            m.serial_share = med("serial_share", [r for r in ok if r.serial_basis == m.serial_basis])
        m.gil_note = "" if m.gil_share is not None else next((r.gil_note for r in rows if r.gil_note), "")
        m.amdahl_ceiling = 1.0 / m.serial_share if m.serial_share else None
        keys = {k for r in ok for k in r.ratios}
        m.ratios = {k: statistics.median([r.ratios[k] for r in ok if k in r.ratios]) for k in sorted(keys)}
        out.append(m)
    return out

def headline(results: list[BenchResult]) -> str:
    """One line for `make demo`: the best sainet loader against Ultralytics' own, naming the shapes
    compared (an images/s ratio only when the output shapes are equal)."""
    ours = [r for r in results if r.kind == "loader" and not r.name.startswith("ultralytics") and r.images_per_s > 0]
    if not ours:
        return "no sainet loader ran"
    best = max(ours, key=lambda r: r.megapixels_per_s or 0.0)
    text = f"best sainet loader {best.name}: {best.images_per_s:.0f} img/s at {best.out_shape} ({best.megapixels_per_s or 0:.0f} Mpx/s"
    if "vs_work-minimum" in best.ratios:
        text += f", {best.ratios['vs_work-minimum']:.2f}x work-minimum"
        if "cpu_vs_work-minimum" in best.ratios:
            text += f" ({best.ratios['cpu_vs_work-minimum']:.2f}x in CPU time per image)"
    text += ")"
    ul = next((r for r in results if r.name == "ultralytics" and r.images_per_s > 0), None)
    if ul is None:
        return text + "; Ultralytics not measured"
    if "vs_ultralytics" in best.ratios:
        return text + f"; {best.ratios['vs_ultralytics']:.2f}x Ultralytics ({ul.images_per_s:.0f} img/s), both at {ul.out_shape}"
    return (text + f"; Ultralytics {ul.images_per_s:.0f} img/s at {ul.out_shape} (square): different shapes, so only "
            f"megapixels/s compare: {best.ratios.get('mpx_vs_ultralytics', 0):.2f}x")

def host_description() -> dict:
    from sainet.profiles import choose_profile, detect_host

    host = detect_host()
    prof = choose_profile("auto", host)
    return {"profile": prof.name, "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            **host.as_dict()}

def save_results(results: list[BenchResult], cfg: BenchConfig, out_dir: Path, tag: str, plot: Path | None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"host": host_description(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "settings": {"imgsz": format_imgsz(cfg.imgsz), "batch": cfg.batch, "augment": cfg.augment, "threads": cfg.threads,
                        "prefetch": cfg.prefetch, "workers": cfg.workers, "cold": cfg.cold, "seconds": cfg.seconds,
                        "batches": cfg.batches, "repeats": cfg.repeats, "augment_settings": hyp_text(cfg),
                        "stores": {k: str(v) for k, v in cfg.stores.items()},
                        "source": str(cfg.source) if cfg.source else None},
           "results": [asdict(r) for r in results]}
    path = plain_child(out_dir, f"{tag}.json", "result tag")
    path.write_text(json.dumps(doc, indent=2))
    png = plot or out_dir / f"{tag}.png"
    plot_results(results, png, f"{tag} ({doc['host']['profile']})")
    return path

def _legend_groups(rs: list[BenchResult]) -> dict[str, tuple[str, list[BenchResult]]]:
    """Colour -> (legend label naming the output shapes it compares, its rows)."""
    groups: dict[str, tuple[str, list[BenchResult]]] = {}
    for colour, label, pick in (
        ("#2a7ab0", "sainet loaders", lambda r: r.kind != "reference" and not r.name.startswith("ultralytics")),
        ("#d9534f", "Ultralytics' own loader (square: rect=False)", lambda r: r.name.startswith("ultralytics")),
        ("#999999", "references", lambda r: r.kind == "reference"),
    ):
        rows = [r for r in rs if pick(r)]
        if rows:
            shapes = sorted({r.out_shape or "the source's size" for r in rows})
            groups[colour] = (f"{label}: output {', '.join(shapes)}", rows)
    return groups


def plot_results(results: list[BenchResult], png: Path, title: str) -> None:
    """images/s per row, coloured by group; the legend says which output shape (WxH) each group makes, so a
    square Ultralytics bar beside rectangular sainet bars is not read as like for like."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rs = [r for r in results if r.images_per_s > 0]
    groups = _legend_groups(rs)
    colour_of = {id(r): c for c, (_, rows) in groups.items() for r in rows}
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(rs)), 4.6))
    ax.bar([f"{r.name}\n{r.out_shape or 'source'}" for r in rs], [r.images_per_s for r in rs],
           color=[colour_of[id(r)] for r in rs])
    for i, r in enumerate(rs):
        ax.text(i, r.images_per_s, f"{r.images_per_s:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("images/s")
    ax.set_title(title, fontsize=9)
    ax.legend(handles=[Patch(color=c, label=label) for c, (label, _) in groups.items()], fontsize=7, loc="upper right",
              title="bars compare these output shapes (WxH)", title_fontsize=7)
    plt.xticks(rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
