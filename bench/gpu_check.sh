#!/usr/bin/env bash
# The sparse-FFN GPU check in one go (issue 12): preflight (torch, CUDA, nvcc, ninja), build,
# tests (never aborting what follows), benchmark (CUDA graphs, dense cuBLAS in the same run),
# decode tokens/s; writes OUT/results.json and OUT/results.md. All logic is in bench/gpu_check.py.
#
#   bash bench/gpu_check.sh                          # the H200 run (OUT=outputs/gpu_check)
#   bash bench/gpu_check.sh --device cpu --quick     # CPU dry run of the same steps (CI)
#   bash bench/gpu_check.sh --out /tmp/check --skip decode
#
# Interpreter: $PYTHON, else python3, else python. Started by file path (not -c/-m), so the
# repository root's ./actsparse cannot shadow the package mapping (see bench/gpu_check.py).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python || true)}
if [ -z "$PY" ]; then
  echo "gpu_check: no python3 or python on PATH (set PYTHON=/path/to/python)" >&2
  exit 2
fi
exec "$PY" bench/gpu_check.py "$@"
