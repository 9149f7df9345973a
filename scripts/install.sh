#!/usr/bin/env bash
# Sets up a fresh machine: a virtual environment in .venv with the pinned stack, the CUDA
# compiler wheels, and sharpattn built in place (editable) with its CPU and CUDA kernels.
#
#   bash scripts/install.sh            # CPU + CUDA kernels (CUDA compiled even with no GPU)
#   SHARPATTN_FORCE_CPU=1 bash scripts/install.sh   # CPU kernels only, faster build
#
# TORCH_CUDA_ARCH_LIST picks the GPU architectures (default: setup.py's list).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements/base.txt -r requirements/build.txt \
  -r requirements/test.txt

# --no-build-isolation: build against the torch just installed, not a second one.
if [ -z "${SHARPATTN_FORCE_CPU:-}" ]; then
  export SHARPATTN_FORCE_CUDA=1
fi
MAX_JOBS=${MAX_JOBS:-$(nproc)} .venv/bin/python -m pip install --quiet --no-build-isolation \
  --no-deps -e .
.venv/bin/python -c "import sharpattn, json; print(json.dumps(sharpattn.build_info(), indent=1))"
