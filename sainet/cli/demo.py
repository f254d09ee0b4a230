"""`sainet demo`: run sainet.demo and print what happened, the results plot and the bench table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sainet.cli._app import app, bar_factory, console, run
from sainet.cli.bench import print_bench_table


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Working folder for the demo's data, stores, bench results and runs.")] = Path("demo"),
    bench: Annotated[bool, typer.Option("--bench/--no-bench", help="Also benchmark the loaders on the demo's stores.")] = True,
) -> None:
    """Run the main job end to end on embedded synthetic data and show that the detector learns.

    Synthesize an easy fire/smoke set, check it, pack it (shards into /dev/shm when it fits, LMDB
    beside it), verify, benchmark the loaders, and train YOLOv8n on the CPU long enough that
    mAP50 rises well above 0 (about 3 minutes on 2 cores). Ends with the path of the results plot
    and the bench table.

    Examples:

    * `sainet demo`
    * `sainet demo --out /tmp/demo --no-bench`
    """
    from sainet.core.errors import SettingsError
    from sainet.core.safepath import output_dir
    from sainet.demo import DEMO, run_demo

    def body() -> int:
        output_dir(out, "--out", error=SettingsError)  # never /, a system folder or a store
        with bar_factory() as bar:
            report = run_demo(out, DEMO, progress=bar, bench=bench)
        t = Table(title=f"sainet demo ({report.seconds:.0f}s)")
        t.add_column("step")
        t.add_column("result", overflow="fold")
        for step, text in report.steps:
            t.add_row(step, text)
        console.print(t)
        if report.bench:
            print_bench_table(report.bench, report.bench_config, report.bench_profile)
        console.print(f"results plot: [bold]{report.results_png or report.train.save_dir}[/]")
        console.print("next:", highlight=False)
        for cmd in report.next_steps:
            console.print(f"  {cmd}", highlight=False, soft_wrap=True)
        if report.store and str(report.store).startswith("/dev/shm"):
            console.print(f"the demo store stays in {report.store} (RAM): remove it with `rm -r {report.store}`")
        return 0

    run(body)
