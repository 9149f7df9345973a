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
# Without PYTHON it tries python3.12 on PATH, then every 3.12 that pyenv has (newest first),
# and takes the first that runs: a pyenv shim named python3.12 is on PATH even when the selected
# pyenv version is another one, and then it does not run.
# Exit status 3: no Python 3.12 on this machine (CI reports the stack as not run, not failed).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu-stack}

candidates_312() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  command -v python3.12 || true
  local root
  for root in "${PYENV_ROOT:-}" "$(pyenv root 2>/dev/null || true)" "$HOME/.pyenv" /root/.pyenv; do
    [ -d "$root/versions" ] || continue
    ls -d "$root"/versions/3.12.*/bin/python3.12 2>/dev/null | sort -rV
  done
}
PY=""
while read -r candidate; do
  if [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    PY=$candidate; break
  fi
done < <(candidates_312)
if [ -z "$PY" ]; then
  echo "install_gpu_stack.sh: no Python 3.12 found (set PYTHON=/path/to/python3.12)" >&2
  exit 3
fi
echo "install_gpu_stack.sh: Python 3.12 at $PY"

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
