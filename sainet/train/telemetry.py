"""Telemetry once per epoch: after a resume, the rows of the epochs that run again are dropped first.

A run killed after an epoch's results row but before its last.pt (or stopped mid-epoch) replays
that epoch; without this, ``results.csv`` (Ultralytics'), ``loader.csv``, ``ranks.csv`` and
``samples.csv`` would hold it twice. The files are rewritten atomically.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from sainet.train.checkpoint import atomic_write_bytes

__all__ = ["TELEMETRY_FILES", "keep_epochs_up_to"]

log = logging.getLogger(__name__)
TELEMETRY_FILES = ("results.csv", "loader.csv", "ranks.csv", "samples.csv")


def keep_epochs_up_to(run: Path, epochs_done: int) -> dict[str, int]:
    """Keep the rows of epochs 1..`epochs_done` (1-based, the ``epoch`` column) in the run's telemetry
    files; returns the rows dropped per file."""
    dropped: dict[str, int] = {}
    for name in TELEMETRY_FILES:
        path = run / name
        if not path.is_file():
            continue
        text = path.read_text()
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            continue
        header, body = rows[0], rows[1:]
        col = [h.strip() for h in header].index("epoch") if "epoch" in [h.strip() for h in header] else None
        if col is None:
            continue
        keep = [r for r in body if r and float(r[col]) <= epochs_done]
        if len(keep) == len(body):
            continue
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([header, *keep])
        atomic_write_bytes(path, out.getvalue().encode())
        dropped[name] = len(body) - len(keep)
        log.info("%s: dropped %d row(s) of epochs after %d (they run again)", path, dropped[name], epochs_done)
    return dropped
