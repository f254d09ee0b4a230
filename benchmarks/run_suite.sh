#!/usr/bin/env bash
# The recorded CPU benchmark suite (benchmarks/README.md). Each `sainet bench-loader` call measures
# its backends and references side by side in one run; results land in benchmarks/results/<profile>/.
#   bash benchmarks/run_suite.sh [WORK]   (WORK: where sources and stores go; default /dev/shm/sainet-bench)
# Environment: PY (python with sainet; default .venv/bin/python), SECONDS_PER_BACKEND (10), REPEATS (3,
# the square like-for-like rows), ONLY=square (just those rows, issue 14).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/dev/shm/sainet-bench}
S=${SECONDS_PER_BACKEND:-10}
PY=${PY:-.venv/bin/python}
mkdir -p "$WORK"
PROFILE=$($PY -m sainet profile --json | $PY -c "import json,sys; print(json.load(sys.stdin)['profile'])")
bench() {  # bench TAG ARGS...: skipped when benchmarks/results/<profile>/TAG.json exists (rm it to re-measure)
  local tag=$1; shift
  [ -f "benchmarks/results/$PROFILE/$tag.json" ] && { echo "have $tag"; return; }
  $PY -m sainet bench-loader "$@" --tag "$tag" --out benchmarks/results  # the recorded results (default: runs/bench)
}
# like for like (issue 14): square outputs on both sides, Ultralytics' default train augment plus
# mixup 0.15, REPEATS rounds round-robin (medians), 200 images of 1440x808
[ -f "$WORK/src200/data.yaml" ] || $PY -m sainet synth "$WORK/src200" --images 200 --size 1440x808 --seed 0
for imgsz in 640 1440; do
  bench "square-$imgsz-augment" --source "$WORK/src200" --work "$WORK/stores-src200" --imgsz $imgsz --augment \
    --seconds "${SQUARE_SECONDS:-20}" --repeats "${REPEATS:-3}" --loaders ram,shm,lmdb,ultralytics
done
[ "${ONLY:-all}" = square ] && exit 0
[ -f "$WORK/src/data.yaml" ] || $PY -m sainet synth "$WORK/src" --images 1000 --size 1440x808 --seed 0
[ -f "$WORK/src100/data.yaml" ] || $PY -m sainet synth "$WORK/src100" --images 100 --size 1440x808 --seed 0
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
