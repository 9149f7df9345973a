#!/usr/bin/env bash
# The first run on a lent GPU machine (first version). That machine reaches no package registry,
# so this builds sharpattn against the torch already installed there and fetches nothing: pip
# runs with --no-index --no-build-isolation --no-deps. Then it runs the CUDA and Triton tests
# and writes everything under benchmarks/results/gpu-check/<gpu>-<date>/ (or $GPU_CHECK_OUT):
#   env.txt       Python, torch, CUDA, Triton, setuptools, nvcc, GPU
#   build.log     the build (CUDA kernels for this GPU's architecture)
#   pytest.log    pytest -m "cuda or triton" (compiled Triton on the GPU, the CUDA kernels)
#   junit.xml     the same, per test
#   summary.txt   what ran, what was skipped and why, exit codes
#
#   bash scripts/gpu_check.sh                   # python3 must be the one that has torch
#   PYTHON=/opt/torch/.venv/bin/python3 bash scripts/gpu_check.sh
#   PYTEST_ARGS="-x" bash scripts/gpu_check.sh  # extra pytest arguments
#
# Where python3 is a virtual environment (the GPU machine's is), sharpattn is installed into it
# in place (editable); a system Python gets .venv-gpu-check with --system-site-packages instead.
# Test tools it lacks (pytest, hypothesis, expecttest for torch.library.opcheck) are installed
# from wheels in .whl/ if that folder exists (carried there), never from a registry.
# On a machine without a GPU it builds the CPU kernels, runs the Triton tests in the interpreter
# and says that the CUDA tests were skipped.
#
# Not yet done here (issue "ready for the first GPU"): compute-sanitizer (memcheck, racecheck,
# initcheck, synccheck), the GPU benchmarks and their report, the NCCL check of the training
# package.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1

PY=${PYTHON:-python3}
if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "gpu_check.sh: $PY has no torch; set PYTHON to the interpreter that has it" >&2
  exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
  [ -x .venv-gpu-check/bin/python ] || "$PY" -m venv --system-site-packages .venv-gpu-check
  PY=.venv-gpu-check/bin/python
fi

has_gpu=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')
if [ "$has_gpu" = 1 ]; then
  name=$("$PY" -c 'import torch; print(torch.cuda.get_device_name().replace(" ", "-").lower())')
else
  name=cpu-$(hostname)
fi
OUT=${GPU_CHECK_OUT:-benchmarks/results/gpu-check/$name-$(date -u +%Y%m%d-%H%M)}
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }

{
  "$PY" - <<'PY'
import importlib.metadata as md, platform, sys, torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda)
for name in ("triton", "setuptools", "wheel", "ninja", "numpy", "pytest"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"sm_{p.major}{p.minor}", f"{p.total_memory / 2**30:.0f} GiB",
          p.multi_processor_count, "SMs")
print("platform", platform.platform())
PY
  command -v nvcc >/dev/null && nvcc --version | tail -n 2 || echo "nvcc not on PATH"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=driver_version --format=csv,noheader
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# Test tools the machine lacks, from carried wheels only.
missing=$("$PY" -c '
import importlib.util
print(" ".join(m for m in ("pytest", "hypothesis", "expecttest")
               if importlib.util.find_spec(m) is None))')
if [ -n "$missing" ]; then
  if [ -d .whl ]; then
    "$PY" -m pip install --quiet --no-index --no-deps .whl/*.whl
  else
    say "missing test tools: $missing (carry their wheels in .whl/)"
  fi
fi

# The build: CUDA kernels for this GPU only (a fast build), the CPU kernels always.
if [ "$has_gpu" = 1 ]; then
  export SHARPATTN_FORCE_CUDA=1
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c \
    'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
else
  export SHARPATTN_FORCE_CPU=1
  say "no GPU: building the CPU kernels only"
fi
t0=$(date +%s)
MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" -m pip install --no-index --no-build-isolation --no-deps \
  -e . > "$OUT/build.log" 2>&1
build_rc=$?
say "build: exit $build_rc in $(( $(date +%s) - t0 )) s against the installed torch, nothing fetched (log: build.log)"
if [ "$build_rc" != 0 ]; then
  tail -n 30 "$OUT/build.log"
  exit "$build_rc"
fi
"$PY" -c 'import json, sharpattn; print(json.dumps(sharpattn.build_info(), indent=1))' \
  | tee -a "$summary"

t0=$(date +%s)
# shellcheck disable=SC2086
"$PY" -m pytest tests -m "cuda or triton" -q -p no:cacheprovider -rs \
  --junitxml="$OUT/junit.xml" ${PYTEST_ARGS:-} > "$OUT/pytest.log" 2>&1
test_rc=$?
tail -n 40 "$OUT/pytest.log"
say "tests -m 'cuda or triton': exit $test_rc in $(( $(date +%s) - t0 )) s: $(tail -n 1 "$OUT/pytest.log")"
if [ "$has_gpu" != 1 ]; then
  say "skipped: the CUDA tests and compiled Triton (no GPU here; Triton ran in its interpreter)"
fi
say "not run by this version: compute-sanitizer, GPU benchmarks, NCCL check"
say "results: $OUT"
exit "$test_rc"
