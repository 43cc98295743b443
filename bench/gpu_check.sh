#!/usr/bin/env bash
# GPU check for the sparse FFN kernels (issue 8), a few minutes on one H200:
#   1. builds the extension (C++ + CUDA for the visible GPU's architecture),
#   2. runs the correctness tests (CUDA cases included),
#   3. prints the benchmark table (LLaMA-2-7B FFN, bf16, CUDA graphs) and writes JSON.
# Needs torch with CUDA, a CUDA toolkit (nvcc; CUDA_HOME if not on PATH), pytest; no Hydra,
# omegaconf or wandb (the kernel path does not import them; conftest.py, which does, is skipped).
# Usage: bash bench/gpu_check.sh [OUT_DIR]      (PYTHON=... to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python}
OUT=${1:-${OUT:-$REPO/outputs/gpu_check}}
mkdir -p "$OUT"
export ACTSPARSE_CACHE_DIR=${ACTSPARSE_CACHE_DIR:-$OUT/cache}

# Importable without `pip install`: the repo maps top-level folders to actsparse.* subpackages
# (pyproject's package-dir); mirror that with a symlink tree when actsparse is not installed.
if ! "$PY" -c "import actsparse.plugins.sparse_ffn" 2>/dev/null; then
  SHIM=$(mktemp -d)/actsparse
  mkdir -p "$SHIM"
  for f in "$REPO"/actsparse/*; do ln -s "$f" "$SHIM/"; done
  for sub in plugins callbacks metrics conf csrc; do ln -s "$REPO/$sub" "$SHIM/$sub"; done
  export PYTHONPATH="$(dirname "$SHIM")${PYTHONPATH:+:$PYTHONPATH}"
fi

echo "== environment"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader || true

echo "== build"
time "$PY" -c "
from actsparse import ext
s = ext.load(verbose=False)
print(s)
assert s.available and s.cuda, 'CUDA kernels did not build: ' + s.reason
"

echo "== tests"
"$PY" -m pytest tests/test_sparse_ffn.py --noconftest -p no:cacheprovider -o addopts="" -q -rs 2>&1 | tee "$OUT/tests.txt"

echo "== benchmark (bf16, LLaMA-2-7B FFN, random patterns)"
"$PY" -m actsparse.bench sparse-ffn --device cuda --shape 7b --sparsity 0 50 80 90 95 --batch 1 4 8 32 \
  --repeats 20 --json "$OUT/sparse_ffn_cuda.json" | tee "$OUT/bench_cuda.md"
"$PY" -m actsparse.bench sparse-ffn --device cuda --shape 13b 70b --sparsity 90 --batch 1 \
  --repeats 20 --json "$OUT/sparse_ffn_cuda_large.json" | tee -a "$OUT/bench_cuda.md"
echo "== done: $OUT"
