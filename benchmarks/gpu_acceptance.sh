#!/usr/bin/env bash
# The GPU acceptance kit (issue 16): on a bare CUDA box, possibly without a package registry,
# install, test, measure and train, and write every result into one folder.
#
#   bash benchmarks/gpu_acceptance.sh RESULTS [--wheels DIR] [--work DIR] [--images N] [--seconds S] [--epochs E]
#
#   RESULTS     folder for everything this run produces (created; a log, JSON, the run folders)
#   --wheels    a folder of *.whl, or of the parts made by benchmarks/gpu_wheels.sh (wheels.tar.NN
#               + SHA256SUMS): checked, joined with cat, installed with
#               pip install --no-index --no-deps --target WORK/site (see GPU.md). Without it the
#               packages must already import (e.g. a .venv in the checkout).
#   --work      scratch space for the synthetic data and stores (default /dev/shm/sainet-gpu)
#   --images    synthetic 1440x808 JPEGs to make (default 600, as in GPU.md); --seconds per bench
#               backend (default 15); --epochs of the short training (default 2)
#   --steps     comma-separated subset of: install,env,data,tests,budget,phases,executor,feed,decode,bench,train,cpuscale
#               (default all; gputests: the GPU tests without the CPU executor tests)
#   --loaders   bench-loader backends (default shm,lmdb,dali,ultralytics); --sizes bench output sizes
#               (default "1440x808,1440"); --decode-batches (default 32,64); --step-timeout seconds per
#               step (default none)
#   PYTHON=...  the interpreter (default python3, or the checkout's .venv when there is no --wheels)
#
# Steps (each one's exit status goes to RESULTS/summary.tsv; a failed step does not stop the rest):
#   env        nvidia-smi, python, torch/CUDA/DALI versions, git revision
#   tests      pytest -m gpu (the GPU tests) and the CPU executor tests, junit XML
#   budget     benchmarks/gpu_budget.py: device bytes, kernels, host ms per batch (counted, no GPU needed)
#   phases     benchmarks/gpu_phases.py: the executor alone, eager and compiled: CUDA-event ms per batch and
#              per phase, host enqueue ms, peak memory (1440x808 -> 1440x832, batch 32)
#   executor   benchmarks/gpu_executor.py: batched vs per-placement torch executor at 1440x832, batch 32
#   feed       benchmarks/dali_feed_ahead.py: DALI mixed decode img/s, one and two assemblers, submit wait
#   decode     benchmarks/dali_decode.py: the DALI decode-only reference (mixed, batch 32 and 64)
#   bench      sainet bench-loader, rect 1440x832 and square 1440, shm/lmdb/dali/ultralytics, augment
#   train      sainet train --loader dali --device 0, yolov8s, 1440x832, batch 32 (loader.csv: data wait)
#   cpuscale   benchmarks/loader_scaling.py: issue 23's CPU loaders at 1, 4, 8, 16 threads / assembler
#              processes, square 640, JPEG and raw shards, shm and shm-mp (~2 min; not in the default
#              list: a second call on the warm machine, `--steps install,data,cpuscale`)
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || { sed -n 2,35p "$0"; exit 2; }
RESULTS=$(mkdir -p "$1" && cd "$1" && pwd); shift
WHEELS= WORK=/dev/shm/sainet-gpu IMAGES=600 SECS=15 EPOCHS=2 STEPS=install,env,data,tests,budget,phases,executor,feed,decode,bench,train
LOADERS=shm,lmdb,dali,ultralytics SIZES=1440x808,1440 STEP_TIMEOUT= DECODE_BATCHES=32,64
while [ $# -gt 0 ]; do
  case $1 in
    --wheels) WHEELS=$(cd "$2" && pwd); shift ;;
    --work) WORK=$2; shift ;;
    --images) IMAGES=$2; shift ;;
    --seconds) SECS=$2; shift ;;
    --epochs) EPOCHS=$2; shift ;;
    --steps) STEPS=$2; shift ;;
    --loaders) LOADERS=$2; shift ;;
    --sizes) SIZES=$2; shift ;;
    --decode-batches) DECODE_BATCHES=$2; shift ;;
    --step-timeout) STEP_TIMEOUT=$2; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$WORK"
cd "$REPO"
exec > >(tee -a "$RESULTS/acceptance.log") 2>&1
printf 'step\texit\tseconds\n' > "$RESULTS/summary.tsv"
want() { [[ ",$STEPS," == *",$1,"* ]]; }
step() {  # step NAME CMD...: run, log, record the exit status and the time; never abort the kit
  local name=$1 t0=$SECONDS rc; shift
  echo "=== $name: $*"
  if [ -n "$STEP_TIMEOUT" ]; then timeout -k 10 "$STEP_TIMEOUT" "$@"; else "$@"; fi; rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$RESULTS/summary.tsv"
  echo "=== $name: exit $rc"
  return 0
}

install_wheels() {  # parts (+ SHA256SUMS) or plain wheels -> WORK/site
  local src=$WHEELS
  if ls "$WHEELS"/wheels.tar.* >/dev/null 2>&1; then
    if [ -f "$WHEELS/SHA256SUMS" ]; then (cd "$WHEELS" && sha256sum -c SHA256SUMS) || return 1; fi
    rm -rf "$WORK/wheels" && mkdir -p "$WORK/wheels"
    cat "$WHEELS"/wheels.tar.* | tar xf - -C "$WORK/wheels" || return 1
    src=$WORK/wheels
  fi
  "$PY" -m pip install --no-index --no-deps --target "$WORK/site" "$src"/*.whl && touch "$WORK/site/.sainet-installed"
}

# -- install -------------------------------------------------------------------------------------
if [ -n "$WHEELS" ]; then
  PY=${PYTHON:-python3}
  if want install && [ ! -f "$WORK/site/.sainet-installed" ]; then step install install_wheels; fi
  export PYTHONPATH="$WORK/site:$REPO" PATH="$WORK/site/bin:$PATH"  # bin: py-spy, for the GIL share
else
  [ -x "$REPO/.venv/bin/python" ] && PY=${PYTHON:-$REPO/.venv/bin/python} || PY=${PYTHON:-python3}
  export PYTHONPATH="$REPO"
fi
export YOLO_OFFLINE=1
SAINET=("$PY" -m sainet)

# -- env -----------------------------------------------------------------------------------------
env_report() {
  nvidia-smi || true
  git -C "$REPO" log -1 --format='git %H %s' || true
  "$PY" - <<'EOF'
import json, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
try:
    import nvidia.dali as dali
    info["dali"] = dali.__version__
except ImportError as e:
    info["dali"] = f"missing: {e}"
print(json.dumps(info))
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device: this kit measures the GPU path")
EOF
  [ $? = 0 ] || return 1
  "${SAINET[@]}" profile --json
}
if want env; then step env env_report 2>&1 | tee "$RESULTS/env.txt"; fi

# -- data ----------------------------------------------------------------------------------------
if want data; then
  [ -f "$WORK/src/data.yaml" ] || step synth "${SAINET[@]}" synth "$WORK/src" --images "$IMAGES" --size 1440x808 --seed 0
  [ -f "$WORK/shards/index.sai" ] || step pack "${SAINET[@]}" pack "$WORK/src" --to "$WORK/shards" --format shards
fi

# -- tests ---------------------------------------------------------------------------------------
if want gputests; then
  step tests-gpu "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml "$RESULTS/pytest-gpu.xml"
fi
if want tests; then
  step tests-gpu "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml "$RESULTS/pytest-gpu.xml"
  step tests-executor "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_gpu_executor.py tests/test_augment.py \
    --junitxml "$RESULTS/pytest-executor.xml"
fi

# -- measurements --------------------------------------------------------------------------------
want budget && step budget sh -c "'$PY' benchmarks/gpu_budget.py --json | tee '$RESULTS/gpu_budget.json'"
want phases && step phases sh -c "'$PY' benchmarks/gpu_phases.py --json | tee '$RESULTS/gpu_phases.json'"
want feed && step feed sh -c "'$PY' benchmarks/dali_feed_ahead.py --device mixed --batch 32 --size 1440x808 --threads 8 \
  --runs 20 | tee '$RESULTS/dali_feed.json'"
want executor && step executor sh -c "'$PY' benchmarks/gpu_executor.py --fuse --device cuda --imgsz 1440x832 --src 1440x808 --batch 32 \
  --seconds $SECS | tee '$RESULTS/gpu_executor.txt'"
want decode && for batch in ${DECODE_BATCHES//,/ }; do
  step "decode-b$batch" sh -c "'$PY' benchmarks/dali_decode.py --store '$WORK/shards' --batch $batch --threads 8 \
    --seconds $SECS | tee '$RESULTS/dali_decode_b$batch.json'"
done
want bench && for imgsz in ${SIZES//,/ }; do
  step "bench-$imgsz" "${SAINET[@]}" bench-loader --source "$WORK/src" --work "$WORK/stores" \
    --loaders "$LOADERS" \
    --imgsz "$imgsz" --batch 32 --seconds "$SECS" --out "$RESULTS/bench" --tag "gpu-$imgsz-aug" \
    --plot "$RESULTS/bench-$imgsz.png" --json
done

want cpuscale && {
  [ -f "$WORK/raw640/index.sai" ] || step pack-raw640 "${SAINET[@]}" pack "$WORK/src" --to "$WORK/raw640" --format shards \
    --mode raw --imgsz 640
  step cpuscale-jpeg sh -c "'$PY' benchmarks/loader_scaling.py --store '$WORK/shards' --imgsz 640 --counts 1,4,8,16 \
    --loaders shm,shm-mp --seconds 4 --rounds 1 --json '$RESULTS/loader_scaling_jpeg.json'"
  step cpuscale-raw sh -c "'$PY' benchmarks/loader_scaling.py --store '$WORK/raw640' --imgsz 640 --counts 1,4,8,16 \
    --loaders shm,shm-mp --seconds 4 --rounds 1 --json '$RESULTS/loader_scaling_raw.json'"
}

# -- training ------------------------------------------------------------------------------------
want train && step train "${SAINET[@]}" train --data "$WORK/shards" --loader dali --model yolov8s.yaml --imgsz 1440x808 \
  --epochs "$EPOCHS" --batch 32 --device 0 --project "$RESULTS/runs" --name dali-1440x808

echo "=== summary ($RESULTS/summary.tsv)"
column -t "$RESULTS/summary.tsv" 2>/dev/null || cat "$RESULTS/summary.tsv"
! awk -F'\t' 'NR > 1 && $2 != 0 {bad = 1} END {exit !bad}' "$RESULTS/summary.tsv"
