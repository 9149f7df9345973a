#!/usr/bin/env bash
# The first run on a lent GPU machine (H100/H200): one command, under 10 minutes, nothing
# fetched. It has never yet run on a GPU (docs/gpu_check.md says what to expect and how to read
# what it writes). In order, each step under its own timeout, a failing step reported and the
# next one run:
#   build       pip install -e . against the torch installed there (--no-index
#               --no-build-isolation --no-deps), CUDA kernels for this GPU's architecture only;
#               skipped when the extension is already built for it
#   env         Python, torch, CUDA, Triton, nvcc, driver, compute-sanitizer, GPU, build_info
#   tests       pytest -m "cuda or triton" (compiled Triton on the GPU, the CUDA kernels)
#   memcheck racecheck initcheck synccheck
#               compute-sanitizer over a subset of the CUDA backend's tests (sanitizers);
#               skipped, saying why, where a probe first finds compute-sanitizer refused
#   ddp         sharpattn.reid trained by 2 processes (torchrun): NCCL with 2+ GPUs, gloo with
#               CUDA tensors on one GPU
#   demo        the user's path: sharpattn-train's synthetic demo on the GPU (AMP bf16,
#               channels_last, 2 epochs a run), sharpattn-eval and sharpattn-export of SAN
#   bench-targets bench-models bench-ops-block1 bench-ops-blocks2-4     (bench)
#   report      python -m benchmarks.report over the run's benchmark JSON: tables, PNGs, targets
# Everything goes to benchmarks/results/gpu-check/<gpu>-<date>/ (or $GPU_CHECK_OUT): one log
# per step, junit.xml, ddp.json, demo.json, bench/ (JSON, README.md, PNGs), summary.txt /
# summary.json (what ran, exit codes, times, what was skipped and why). Exit 0 when every step
# that ran passed, 1 otherwise, 2 for a usage error.
#
#   bash scripts/gpu_check.sh                     # everything (python3 must have torch)
#   bash scripts/gpu_check.sh --plan              # the steps, timeouts and commands; runs nothing
#   bash scripts/gpu_check.sh tests sanitizers    # some steps or groups (or STEPS="tests ddp")
#   PYTHON=/opt/torch/.venv/bin/python3 bash scripts/gpu_check.sh --tar /tmp/gpu-check.tgz
#   GPU_CHECK_BUDGET_S=0 ...      # no overall limit (default 560 s with a GPU, none without)
#   PYTEST_ARGS="-x" ...          # extra arguments for the tests step
#
# Where python3 is a virtual environment (the GPU machine's is), sharpattn is installed into it
# in place (editable); a system Python gets .venv-gpu-check with --system-site-packages instead.
# Test tools it lacks (pytest, hypothesis, expecttest for torch.library.opcheck) are installed
# from wheels in .whl/ if that folder exists (carried there), never from a registry.
# Without a GPU it builds the CPU kernels, runs the Triton tests in the interpreter and the DDP
# check with gloo on the CPU, and says what it skipped.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

PY=${PYTHON:-python3}
if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "gpu_check.sh: $PY has no torch; set PYTHON to the interpreter that has it" >&2
  exit 1
fi

plan_only=0
for arg in "$@"; do
  case $arg in --plan|-h|--help) plan_only=1 ;; esac
done

if [ "$plan_only" = 0 ]; then
  if ! "$PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
    [ -x .venv-gpu-check/bin/python ] || "$PY" -m venv --system-site-packages .venv-gpu-check
    PY=.venv-gpu-check/bin/python
  fi
  # Test tools the machine lacks, from carried wheels only.
  missing=$("$PY" -c '
import importlib.util
print(" ".join(m for m in ("pytest", "hypothesis", "expecttest")
               if importlib.util.find_spec(m) is None))')
  if [ -n "$missing" ]; then
    if [ -d .whl ]; then
      "$PY" -m pip install --quiet --no-index --no-deps .whl/*.whl
    else
      echo "gpu_check.sh: missing test tools: $missing (carry their wheels in .whl/)" >&2
    fi
  fi
fi

exec "$PY" scripts/gpu_check/main.py "$@"
