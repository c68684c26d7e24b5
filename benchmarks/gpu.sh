#!/usr/bin/env bash
# The GPU check, one prepared script: install, draw 20,000 synthetic scenes at 480 x 360,
# extract VGG16 conv5_3 once, train 3 epochs of the reference model on the cached maps,
# evaluate; images/s, samples/s and peak GPU memory go to benchmarks/RESULTS.md (section
# "gpu") and, when $OUT is set (the device tool's output folder), to $OUT/gpu-results.md.
#
#   bash benchmarks/gpu.sh                       # on a CUDA machine, from the repository root
#   DEVICE=cpu N=40 EPOCHS=1 NO_WRITE=1 GPU_VENV=.venv bash benchmarks/gpu.sh   # a dry run on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-20000}"
EPOCHS="${EPOCHS:-3}"
DEVICE="${DEVICE:-cuda}"
ROOT="${GPU_ROOT:-/tmp/vgkit-gpu}"
VENV="${GPU_VENV:-$ROOT/venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  # a CUDA build of torch from the package index (the default wheel on x86_64 Linux)
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q torch torchvision
  "$VENV/bin/python" -m pip install -q -e .
fi
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
fi
"$VENV/bin/python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
"$VENV/bin/python" benchmarks/gpu_run.py --root "$ROOT" --n-images "$N" --epochs "$EPOCHS" \
  --device "$DEVICE" ${OUT:+--copy-to "$OUT"} ${NO_WRITE:+--no-write}
