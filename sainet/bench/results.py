"""What a bench run is given (`BenchConfig`, made from a hardware profile by `bench_config`) and what
each backend's row holds (`BenchResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# BENCH_NAMES: every name `run_bench` measures (kept in sainet.settings: light enough for the CLI)
from sainet.settings import BENCH_NAMES as BENCH_NAMES
from sainet.settings import default_threads

REFERENCES = ("decode", "work-minimum", "raw-copy")
#: The bench's train augmentation on top of Ultralytics' defaults (mosaic 1.0, HSV 0.015/0.7/0.4,
#: fliplr 0.5, translate 0.1, scale 0.5): mixup 0.15, as in the FASDD stage-1 config (issue 14).
BENCH_HYP: dict[str, float] = {"mixup": 0.15}


@dataclass
class BenchResult:
    name: str
    kind: str  # "loader" or "reference"
    images_per_s: float
    batches: int = 0
    images: int = 0
    seconds: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_percent: float | None = None
    pss_mb: float | None = None  # peak summed PSS of the process tree above the idle baseline
    pss_anon_mb: float | None = None  # ... of which anonymous (private heap); the rest is mapped pages
    #: ... of which the store's own pages (its files mapped from the page cache or /dev/shm, at the end of the
    #: run): shared by every process and rank that reads the store, not the loader's memory
    pss_store_mb: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)
    note: str = ""
    out_shape: str | None = None  # WxH of each output image; None: the source's own size (decode)
    pixels_per_batch: int | None = None
    decodes_per_image: float | None = None  # JPEG decodes per output image (mosaic/mixup partners included)
    augment: str = ""  # the augmentation settings, in Ultralytics' names
    megapixels_per_s: float | None = None
    repeats: list[float] = field(default_factory=list)  # images/s of each repeat (the figure is their median)
    cpu_ms_per_image: float | None = None  # CPU time of the process tree per output image (robust to a busy host)
    #: the share of the loader's CPU time that cannot run in parallel (`serial_basis` says which):
    #: "GIL" for a loader that works on the trainer's threads (the time the trainer's process held its
    #: GIL, sampled by py-spy), "parent CPU" for one whose per-image work runs in other processes (the
    #: CPU time of the trainer's process, all of it counted serial). None: not measured (`gil_note`)
    serial_share: float | None = None
    serial_basis: str = ""
    amdahl_ceiling: float | None = None  # 1 / serial_share: the speed-up no number of cores can exceed
    #: seconds the trainer's process held its GIL / the loader's CPU seconds (every backend; None: not measured)
    gil_share: float | None = None
    gil_note: str = ""  # why the GIL was not sampled (py-spy missing or not allowed to read the process)

    #: children's CPU below this share of the tree's: the loader works on the trainer's threads
    IN_PROCESS = 0.02

    def set_serial(self, parent_cpu_s: float, tree_cpu_s: float, gil_s: float | None = None) -> None:
        """`serial_share`, `serial_basis`, `gil_share` and `amdahl_ceiling` from the parent's and the
        whole tree's CPU seconds and the seconds the parent held its GIL (`gil_s`, None: not sampled).
        Left None when not measurable: a run so short that the parent's CPU, less the memory
        sampler's, rounds to nothing (no process can have no serial part), or a threaded loader
        whose GIL was not sampled (all its work in one process says nothing about its parallel part).
        A GIL sampled over a run with no measurable CPU leaves `gil_note` saying so."""
        if tree_cpu_s <= 0:
            if gil_s is not None and not self.gil_note:
                self.gil_note = "the timed run used no measurable CPU: no share of it"
            return
        if gil_s is not None:
            self.gil_share = min(1.0, gil_s / tree_cpu_s)
        if parent_cpu_s <= 0:  # the memory sampler's CPU taken off left nothing: no serial share
            return
        if tree_cpu_s - parent_cpu_s > self.IN_PROCESS * tree_cpu_s:
            self.serial_share, self.serial_basis = min(1.0, parent_cpu_s / tree_cpu_s), "parent CPU"
        elif self.gil_share:
            self.serial_share, self.serial_basis = self.gil_share, "GIL"
        if self.serial_share:
            self.amdahl_ceiling = 1.0 / self.serial_share


@dataclass
class BenchConfig:
    stores: dict[str, Path]  # "shards", "lmdb" (jpeg stores), optionally "raw"
    source: Path | None  # the dataset folder (disk, ultralytics)
    imgsz: tuple[int, int]
    batch: int = 8
    augment: bool = True
    seconds: float | None = 10.0
    batches: int | None = None
    warmup: int = 3
    threads: int = 2
    prefetch: int = 2
    workers: int = 2  # Ultralytics DataLoader workers
    cold: bool = False
    split: str = "train"
    hyp: dict[str, float] = field(default_factory=lambda: dict(BENCH_HYP))  # Ultralytics names, on its defaults
    repeats: int = 1
    scratch: Path | None = None  # where the Ultralytics link tree goes (default: the system temp folder)
    gil: bool = True  # sample the GIL of the bench's process with py-spy (`gil.GilSampler`)

def bench_config(*, stores: dict[str, Any], source: Any, imgsz: tuple[int, int], profile: Any, batch: int | None = None,
                 augment: bool = True, seconds: float | None = 10.0, batches: int | None = None,
                 threads: int | None = None, workers: int | None = None, cold: bool = False, repeats: int = 1,
                 hyp: dict[str, Any] | None = None, scratch: Any = None, gil: bool = True) -> BenchConfig:
    """`BenchConfig` with the profile's values wherever the user gave none.

    Threads: the profile's, at most the cores (`default_threads`); Ultralytics workers: as many as
    the threads, so both sides get the same parallelism.
    """
    rec = profile.recommended
    n_threads = threads or default_threads(recommended=int(rec["threads"]))
    return BenchConfig(stores=stores, source=source, imgsz=imgsz, batch=batch or int(rec["batch"]), augment=augment,
                       seconds=seconds, batches=batches, threads=n_threads, prefetch=int(rec["prefetch"]),
                       workers=n_threads if workers is None else workers, cold=cold, repeats=repeats,
                       hyp={**BENCH_HYP, **(hyp or {})}, scratch=scratch, gil=gil)
