#!/usr/bin/env bash
# Device check: the parity tool on every reference fixture with the default numerics policy
# (config.model.matmul_precision = 'highest'), then one line of experiments/benchmark.py.
#
#   experiments/gpu_check.sh            # fixtures from ${TRDETR_SHARED:-../shared}/reference
#   PYTHON=.venv/bin/python experiments/gpu_check.sh
#
# On a CUDA machine whose jax is absent or CPU-only it first runs
# `pip install -e ".[cuda12]"`; a CUDA jax already there is kept. It also runs on CPU, and
# prints the backend it used. About 5 minutes on a GPU. Exit status: 0 when every fixture
# passes, 1 otherwise (the tables say which group failed).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
REF="${TRDETR_SHARED:-../shared}/reference"

backend() { "$PY" -c 'import jax; print(jax.default_backend())' 2>/dev/null; }

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  if [ "$(backend)" != "gpu" ]; then
    echo "gpu_check: a GPU is present but jax is absent or CPU-only: pip install -e .[cuda12]"
    "$PY" -m pip install -q -e ".[cuda12]" || { echo "gpu_check: install failed" >&2; exit 2; }
  fi
elif ! "$PY" -c 'import jax, flax, optax, orbax.checkpoint, ml_collections, scipy' 2>/dev/null; then
  "$PY" -m pip install -q -e . || { echo "gpu_check: install failed" >&2; exit 2; }
fi
echo "gpu_check: backend $(backend), devices: $("$PY" -c 'import jax; print(jax.devices())')"

if [ ! -d "$REF" ]; then
  echo "gpu_check: no reference fixtures at $REF (set TRDETR_SHARED)" >&2
  exit 2
fi
status=0
found=0
for fixture in "$REF"/*/; do
  [ -f "$fixture/params.npz" ] || continue
  found=1
  start=$SECONDS
  "$PY" -m trdetr_jax.parity "$fixture" || status=1
  echo "gpu_check: $(basename "$fixture") took $((SECONDS - start)) s"
done
if [ "$found" -eq 0 ]; then
  echo "gpu_check: no fixture folder (with params.npz) under $REF" >&2
  exit 2
fi

echo "gpu_check: benchmark (QVHighlights shapes, few steps)"
"$PY" experiments/benchmark.py --batch-size 32 --steps 5 --warmup 1 --devices 1 || status=1
exit "$status"
