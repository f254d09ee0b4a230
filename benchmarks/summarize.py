"""Print the markdown tables of benchmarks/README.md from saved bench-loader results.

    python benchmarks/summarize.py benchmarks/results/cpu/jpeg-1440x808-augment.json [...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(path: Path) -> str:
    doc = json.loads(path.read_text())
    s = doc["settings"]
    head = (f"**{path.stem}** — imgsz {s['imgsz']}, batch {s['batch']}, {'augment' if s['augment'] else 'no augment'}, "
            f"{s['threads']} threads, {s['workers']} Ultralytics workers, {s['seconds']} s per backend, "
            f"profile `{doc['host']['profile']}` ({doc['host']['cores']} cores), {doc['time']}\n\n")
    rows = ["| backend | img/s | p50 ms | p99 ms | CPU % | PSS MB (anon) | × decode | × work-min | × Ultralytics |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v, fmt="{:.1f}"):  # noqa: ANN001, ANN202
        return "–" if v is None else fmt.format(v)

    for r in doc["results"]:
        if r["images_per_s"] <= 0:
            rows.append(f"| {r['name']} | {r['note']} |||||||")
            continue
        ratios = r["ratios"]
        pss = "–" if r["pss_mb"] is None else f"{r['pss_mb']:.0f} ({r.get('pss_anon_mb') or 0:.0f})"
        rows.append(f"| {r['name']}{' (ref)' if r['kind'] == 'reference' else ''} | {r['images_per_s']:.1f} | {f(r['p50_ms'])} | "
                    f"{f(r['p99_ms'])} | {f(r['cpu_percent'], '{:.0f}')} | {pss} | {f(ratios.get('vs_decode'), '{:.2f}')} | "
                    f"{f(ratios.get('vs_work-minimum'), '{:.2f}')} | {f(ratios.get('vs_ultralytics'), '{:.2f}')} |")
    return head + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print("\n".join(table(Path(p)) for p in sys.argv[1:]))
