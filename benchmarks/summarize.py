"""Print the markdown tables of benchmarks/README.md from saved bench-loader results.

    python benchmarks/summarize.py benchmarks/results/cpu/square-1440-augment.json [...]

Every row states its output shape and decodes per output image; a ratio to Ultralytics marked
"Mpx" compares megapixels/s (different output shapes), otherwise images/s at the same shape.
"(CPU time)" columns compare CPU time per output image instead (steady on a busy host).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def _ratio(ratios: dict, ref: str) -> str:
    if f"vs_{ref}" in ratios:
        return f"{ratios[f'vs_{ref}']:.2f}"
    if f"mpx_vs_{ref}" in ratios:
        return f"{ratios[f'mpx_vs_{ref}']:.2f} Mpx"
    return "–"


def _cpu(ratios: dict, ref: str) -> str:
    return _f(ratios.get(f"cpu_vs_{ref}"), "{:.2f}")


def _serial(r: dict) -> str:
    """The serial share of the loader's CPU time (the GIL's for threads, the parent's CPU for
    processes; older JSON: the parent's) and the Amdahl ceiling it implies."""
    share = r.get("serial_share")
    if share is None or r["kind"] == "reference":
        return "–"
    basis = f" {r['serial_basis']}" if r.get("serial_basis") else ""
    return f"{100 * share:.1f}{basis} ({r['amdahl_ceiling']:.0f}×)" if r.get("amdahl_ceiling") else f"{100 * share:.1f}{basis}"


def _gil(r: dict) -> str:
    """The share of the loader's CPU time during which the trainer's process held its GIL."""
    return "–" if r.get("gil_share") is None else f"{100 * r['gil_share']:.1f}"


def _row(r: dict) -> str:
    if r["images_per_s"] <= 0:
        return f"| {r['name']} | {r['note']} |" + "|" * 16
    store = "" if r.get("pss_store_mb") is None else f", {r['pss_store_mb']:.0f}"
    pss = "–" if r["pss_mb"] is None else f"{r['pss_mb']:.0f} ({r.get('pss_anon_mb') or 0:.0f}{store})"
    reps = "/".join(f"{x:.1f}" for x in r.get("repeats") or [])
    return (f"| {r['name']}{' (ref)' if r['kind'] == 'reference' else ''} | {r.get('out_shape') or 'source'} | "
            f"{_f(r.get('decodes_per_image'), '{:g}')} | {r['images_per_s']:.1f} | {reps} | {_f(r.get('megapixels_per_s'))} | "
            f"{_f(r['p50_ms'])} | {_f(r['p99_ms'])} | {_f(r['cpu_percent'], '{:.0f}')} | {_f(r.get('cpu_ms_per_image'))} | {pss} | "
            f"{_gil(r)} | {_serial(r)} | "
            f"{_ratio(r['ratios'], 'decode')} | {_ratio(r['ratios'], 'work-minimum')} | {_cpu(r['ratios'], 'work-minimum')} | "
            f"{_ratio(r['ratios'], 'ultralytics')} | {_cpu(r['ratios'], 'ultralytics')} |")


def table(path: Path) -> str:
    doc = json.loads(path.read_text())
    s = doc["settings"]
    head = (f"**{path.stem}** — imgsz {s['imgsz']}, batch {s['batch']}, {s.get('augment_settings') or ('augment' if s['augment'] else 'no augment')}, "
            f"{s['threads']} threads, {s['workers']} Ultralytics workers, {s['seconds']} s per backend, "
            f"{s.get('repeats', 1)} round(s), profile `{doc['host']['profile']}` ({doc['host']['cores']} cores), {doc['time']}\n\n")
    rows = ["| backend | output | decodes/img | img/s (median) | per round | Mpx/s | p50 ms | p99 ms | CPU % | CPU ms/img | "
            "PSS MB (anon, store) | GIL % | serial % (ceiling) | × decode | × work-min | × work-min (CPU time) | × Ultralytics | × Ultralytics (CPU time) |",
            "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows += [_row(r) for r in doc["results"]]
    by_note: dict[str, list[str]] = {}  # each note once, with the backends it is about
    for r in doc["results"]:
        if r.get("note") and r["images_per_s"] > 0:
            by_note.setdefault(r["note"], []).append(r["name"])
    notes = [f"{', '.join(names)}: {note}" for note, names in by_note.items()]
    return head + "\n".join(rows) + "\n" + "".join(f"\n{n}." for n in notes) + ("\n" if notes else "")


if __name__ == "__main__":
    print("\n".join(table(Path(p)) for p in sys.argv[1:]))
