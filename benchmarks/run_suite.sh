#!/usr/bin/env bash
# The recorded CPU benchmark suite (benchmarks/README.md). Each `sainet bench-loader` call measures
# its backends and references side by side in one run; results land in benchmarks/results/<profile>/.
#   bash benchmarks/run_suite.sh [WORK]   (WORK: where sources and stores go; default /dev/shm/sainet-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/dev/shm/sainet-bench}
S=${SECONDS_PER_BACKEND:-10}
BIN=.venv/bin
mkdir -p "$WORK"
PROFILE=$($BIN/sainet profile --json | $BIN/python -c "import json,sys; print(json.load(sys.stdin)['profile'])")
bench() {  # bench TAG ARGS...: skipped when benchmarks/results/<profile>/TAG.json exists (rm it to re-measure)
  local tag=$1; shift
  [ -f "benchmarks/results/$PROFILE/$tag.json" ] && { echo "have $tag"; return; }
  $BIN/sainet bench-loader "$@" --tag "$tag"
}
[ -f "$WORK/src/data.yaml" ] || $BIN/sainet synth "$WORK/src" --images 1000 --size 1440x808 --seed 0
[ -f "$WORK/src100/data.yaml" ] || $BIN/sainet synth "$WORK/src100" --images 100 --size 1440x808 --seed 0
ALL=disk,ram,shm,lmdb,dali,ultralytics
for imgsz in 1440x808 640; do
  for aug in --augment --no-augment; do
    bench "jpeg-$imgsz${aug/--/-}" --source "$WORK/src" --work "$WORK/stores" --imgsz $imgsz $aug --seconds $S --loaders $ALL
    bench "raw-$imgsz${aug/--/-}" --source "$WORK/src" --work "$WORK/stores" --imgsz $imgsz $aug --seconds $S --raw \
      --loaders raw-shm,raw-lmdb
  done
done
# memory: the same loaders on a 100-image and a 1000-image store (1x vs 10x)
for src in src100 src; do
  bench "memory-640-$src" --source "$WORK/$src" --work "$WORK/stores-$src" --imgsz 640 --seconds $S \
    --loaders shm,lmdb,dali,ultralytics,ultralytics-ram
done
