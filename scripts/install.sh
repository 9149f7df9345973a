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
# Build only when something the build reads changed since the last one (scripts/build_stamp.py):
# an editable install picks up Python changes by itself, and a rebuild costs minutes.
stamp=.venv/.sharpattn-build.json
if reason=$(.venv/bin/python scripts/build_stamp.py --explain "$stamp") \
    && .venv/bin/python -c "import sharpattn; assert sharpattn.build_info()['compiled']" 2>/dev/null; then
  echo "install.sh: sharpattn._C is up to date (no source, build setting, torch or Python changed): not rebuilt"
else
  echo "install.sh: building sharpattn._C ($reason)"
  t0=$(date +%s)
  rm -f "$stamp"
  MAX_JOBS=${MAX_JOBS:-$(nproc)} .venv/bin/python -m pip install --quiet --no-build-isolation \
    --no-deps -e .
  .venv/bin/python scripts/build_stamp.py > "$stamp"
  echo "install.sh: built in $(( $(date +%s) - t0 )) s"
fi
.venv/bin/python -c "import sharpattn, json; print(json.dumps(sharpattn.build_info(), indent=1))"
