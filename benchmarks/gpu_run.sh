#!/usr/bin/env bash
# The 10-minute GPU run (issue 21): on a bare CUDA box (see ../shared/GPU.md: wheels you bring),
# within ~8 minutes, into one results folder:
#
#   bash benchmarks/gpu_run.sh RESULTS [--wheels DIR] [gpu_acceptance.sh options...]
#
#   env      nvidia-smi, versions, git revision              -> RESULTS/env.txt
#   data     256 synthetic 1440x808 JPEGs, packed as shards  (WORK, default /dev/shm/sainet-gpu)
#   tests    pytest -m gpu (executor vs OpenCV at 1440x832 b32, fused vs eager under sync-debug "error",
#            stream hand-off with a busy consumer, pinned buffers, DALI vs CPU loader, train, loader.csv clock)
#   budget   benchmarks/gpu_budget.py: counted device bytes / kernels / host ms per batch
#   phases   benchmarks/gpu_phases.py: executor alone, eager and compiled: CUDA-event ms per batch and
#            per phase, host enqueue ms, peak memory
#   feed     benchmarks/dali_feed_ahead.py: DALI mixed decode img/s (the loader's 8 threads), two assemblers
#   decode   benchmarks/dali_decode.py: the DALI decode-only reference row (batch 32)
#   bench    sainet bench-loader dali vs ultralytics, 1440x808 -> 1440x832, batch 32, full augment
#   train    sainet train --loader dali, yolov8s, 1440x808, batch 32, 1 epoch (loader.csv: GPU data-wait)
#
# Each step is capped (--step-timeout 200 s) so one stuck step cannot eat the device time; every
# step's exit status and seconds are in RESULTS/summary.tsv. torch.compile's cache is
# /dev/shm/sainet-gpu/inductor (TORCHINDUCTOR_CACHE_DIR) so the executor's regions compile once for
# all steps; each GPU test has 240 s (pytest-timeout).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || { sed -n 2,22p "$0"; exit 2; }
RESULTS=$1; shift
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/dev/shm/sainet-gpu/inductor}
export PYTEST_ADDOPTS="${PYTEST_ADDOPTS:-} --timeout 240"
exec bash "$REPO/benchmarks/gpu_acceptance.sh" "$RESULTS" --images 256 --seconds 8 --epochs 1 \
  --loaders dali,ultralytics --sizes 1440x808 --decode-batches 32 --step-timeout 200 \
  --steps install,env,data,gputests,budget,phases,feed,decode,bench,train "$@"
