#!/usr/bin/env bash
# Run on a CUDA machine to measure the GPU path the day one is available:
#   bash benchmarks/gpu_acceptance.sh [WORK]
# 1. the GPU variants of the tests (DALI mixed == CPU batches; torch executor on CUDA tensors),
# 2. DALI mixed vs cpu vs libjpeg-turbo decode rates on one store,
# 3. bench-loader with the GPU path against Ultralytics' loader at 1440x808,
# 4. a 1-epoch train with --loader dali at 1440x808 (rectangular).
# Results land in benchmarks/results/<profile>/ and WORK/gpu_acceptance.log.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/dev/shm/sainet-gpu}
make venv
BIN=.venv/bin
mkdir -p "$WORK"
exec > >(tee "$WORK/gpu_acceptance.log") 2>&1
nvidia-smi
$BIN/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name(0))"
$BIN/sainet profile
[ -f "$WORK/src/data.yaml" ] || $BIN/sainet synth "$WORK/src" --images 512 --size 1440x808 --seed 0
[ -f "$WORK/shards/index.sai" ] || $BIN/sainet pack "$WORK/src" --to "$WORK/shards" --format shards
$BIN/python -m pytest -q tests/test_loader_contract.py tests/test_augment.py -k "gpu or dali or executors"
$BIN/python benchmarks/dali_decode.py --store "$WORK/shards" --batch 32 --seconds 10
$BIN/sainet bench-loader --store "$WORK/shards" --loaders shm,dali,ultralytics --imgsz 1440x808 --seconds 15 --tag gpu-1440x808-aug
$BIN/sainet bench-loader --store "$WORK/shards" --loaders shm,dali,ultralytics --imgsz 1440x808 --no-augment --seconds 15 --tag gpu-1440x808-noaug
$BIN/sainet train --data "$WORK/shards" --loader dali --model yolov8s.yaml --imgsz 1440x808 --epochs 1 --device 0 \
  --project "$WORK/runs" --name gpu-dali
echo "done: see $WORK/gpu_acceptance.log and benchmarks/results/"
