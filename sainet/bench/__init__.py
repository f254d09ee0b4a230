"""`sainet bench-loader`: every backend on the same data and settings, side by side in one run.

The package, one job a module: `results` (the config and the row), `sampling` (measuring one
backend: time, latency, CPU, PSS), `backends` (opening sainet's loaders and Ultralytics'), `references`
(decode, work-minimum, raw-copy), `run` (the rounds), `report` (ratios, medians, headline, JSON, plot),
`gil` (the GIL share, sampled by py-spy), `stores` (packing what the bench reads) and `parity` (augment distribution parity with Ultralytics: two-sample tests).

For each backend: warm up, then pull batches for a fixed time or count, recording images/s,
batch latency (p50/p99 of the time the consumer waits for each batch), CPU% of the process tree,
and peak memory as summed PSS of the process tree above the idle baseline (loader worker
processes included, all of which are loader cost), and the loader's serial share with the Amdahl
ceiling it implies (`gil`: the time the trainer's process holds its GIL, sampled by py-spy, for
loaders that work on its threads; the parent's CPU share for those that work in other processes).
References measured in the same run, with the same threads:

- decode: the same JPEGs decoded in a tight loop (the ceiling without augmentation);
- work-minimum: decode once plus one resample of every output pixel into the training shape
  (the ceiling for any loader that augments);
  every row also records CPU time per output image (`cpu_ms_per_image`, the process tree's), and
  `cpu_vs_*` ratios compare it: on a busy host that figure is steady where images/s is not;
- raw-copy: raw frames copied out of the store (the ceiling for raw stores);
- ultralytics: its YOLODataset + InfiniteDataLoader on the same images and hyperparameters.

Like for like: every row states its output shape, pixels per batch, decodes per output image and
augment settings. Ultralytics' train loader always yields square batches (max(imgsz)), so a ratio
to it (`vs_ultralytics`) is only computed for rows of the same output shape; other shapes get a
megapixels/s ratio (`mpx_vs_ultralytics`) instead, never an images/s one. With `repeats` > 1 the
backends run round-robin and every figure and ratio is the median over the repeats.

Nothing is written to stdout while the bench runs (Ultralytics' log lines go to stderr) and
nothing into the source folder: Ultralytics reads a private link tree in a temporary folder,
where its labels cache also lands.
"""

from sainet.bench.report import fill_ratios, headline, host_description, plot_results, save_results
from sainet.bench.results import BENCH_HYP, BENCH_NAMES, REFERENCES, BenchConfig, BenchResult, bench_config
from sainet.bench.run import run_bench, stdout_to_stderr
from sainet.bench.sampling import evict
from sainet.bench.stores import prepare_stores

__all__ = ["BENCH_HYP", "BENCH_NAMES", "REFERENCES", "BenchConfig", "BenchResult", "bench_config", "evict", "fill_ratios", "headline",
           "host_description", "plot_results", "prepare_stores", "run_bench", "save_results", "stdout_to_stderr"]
