#!/usr/bin/env bash
# Sets up the lent GPU machine's own stack on any machine, for CI and for checking a change
# before GPU time is spent: a Python 3.12 virtual environment in .venv-gpu-stack with
# requirements/gpu-stack.txt (torch 2.11.0 with its CUDA 13.0 build, torchvision 0.26, Triton
# 3.6.0, a setuptools below 82) and the test tools, and sharpattn built in place with the CPU
# kernels only (the main stack's build already compiles the CUDA kernels; this keeps CI short).
#
#   bash scripts/install_gpu_stack.sh
#   PYTHON=/path/to/python3.12 bash scripts/install_gpu_stack.sh
#
# Without PYTHON it takes python3.12 from PATH, else the newest 3.12 that pyenv has.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu-stack}

find_python312() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  if command -v python3.12 >/dev/null; then command -v python3.12; return; fi
  local root
  root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  printf "%s\n" "$root"/versions/3.12.*/bin/python3.12 | sort -V | tail -n 1
}
PY=$(find_python312)
if [ -z "$PY" ] || ! "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
  echo "install_gpu_stack.sh: no Python 3.12 found (set PYTHON=/path/to/python3.12)" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r requirements/gpu-stack.txt -r requirements/test.txt

# --no-build-isolation: build against the torch just installed, with its setuptools.
SHARPATTN_FORCE_CPU=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "$VENV/bin/python" -m pip install --quiet \
  --no-build-isolation --no-deps -e .
"$VENV/bin/python" - <<'PY'
import json, sys
import setuptools, torch, triton
import sharpattn
print(f"GPU machine's stack: Python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"Triton {triton.__version__}, setuptools {setuptools.__version__}")
print(json.dumps(sharpattn.build_info(), indent=1))
PY
