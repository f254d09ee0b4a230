#!/usr/bin/env bash
# Download the wheels sainet needs on a GPU box without a package registry (see GPU.md: such a box
# has Python 3.12, torch, torchvision, opencv, numpy, pyarrow, typer, rich, psutil, matplotlib and
# pytest, and lacks the rest), and split them into parts small enough for one transfer each.
#
#   bash benchmarks/gpu_wheels.sh [--dry-run] [--python 3.12] [--part-size 60M] [--out .cache/gpu-wheels]
#
# Writes OUT/wheels/*.whl, OUT/parts/wheels.tar.NN (each <= --part-size) and OUT/parts/SHA256SUMS.
# Send OUT/parts/ to the box, then there: bash benchmarks/gpu_acceptance.sh RESULTS --wheels PARTS_DIR
# (it checks the sums, joins the parts with cat and installs with pip --no-index --no-deps --target).
# Versions are pinned to what this checkout's .venv has (the set the tests ran with), else unpinned.
# --dry-run prints the commands and the package list and downloads nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=3.12
OUT=.cache/gpu-wheels
PART=60M
DRY=0
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --python) PYVER=$2; shift ;;
    --out) OUT=$2; shift ;;
    --part-size) PART=$2; shift ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
# What the box lacks (GPU.md); DALI's CUDA 13 build matches torch's cu130.
NAMES="ultralytics ultralytics-thop ultralytics-platform polars polars-runtime-32 lmdb simplejpeg
nvidia-dali-cuda130 nvidia-nvimgcodec-cu13 nvidia-nvjpeg astunparse gast optree nvtx makefun libcst py-spy"
LOCAL_PY=${LOCAL_PY:-.venv/bin/python}
[ -x "$LOCAL_PY" ] || LOCAL_PY=$(command -v python3)
SPECS=$("$LOCAL_PY" - $NAMES <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
EOF
)
TAG=${PYVER/./}
CMD=("$LOCAL_PY" -m pip download --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp
     --abi "cp$TAG" --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
     --platform manylinux2014_x86_64 --platform any -d "$OUT/wheels")
echo "python $PYVER wheels for:"
echo "$SPECS" | sed 's/^/  /'
echo "download: ${CMD[*]} <specs>"
echo "split:    tar cf - -C $OUT/wheels . | split -b $PART -d - $OUT/parts/wheels.tar."
if [ $DRY = 1 ]; then
  echo "(dry run: nothing downloaded)"
  exit 0
fi
mkdir -p "$OUT/wheels" "$OUT/parts"
# shellcheck disable=SC2086
"${CMD[@]}" $SPECS
rm -f "$OUT"/parts/wheels.tar.*
tar cf - -C "$OUT/wheels" . | split -b "$PART" -d - "$OUT/parts/wheels.tar."
(cd "$OUT/parts" && sha256sum wheels.tar.* > SHA256SUMS)
ls -l "$OUT/parts"
echo "send $OUT/parts/ to the GPU box; there: bash benchmarks/gpu_acceptance.sh RESULTS --wheels <that folder>"
