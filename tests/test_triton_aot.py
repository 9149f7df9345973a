"""Ahead-of-time compilation of every Triton kernel for sm_80 (A100) and sm_90 (H100/H200).

On a CPU the other Triton tests run in Triton's interpreter, which compiles nothing: a kernel
that uses an API the installed Triton lacks on the GPU (Triton 3.6 has no tl.to_tensor, say)
must fail here, on every stack CI runs. Compiling needs no GPU (Triton ships ptxas), and ptxas
reports what a kernel needs: registers, spills, shared memory. tests/triton_compile_check.py
launches every kernel as the launchers do (each launch path at its block with the most elements
per thread; `benchmarks/triton_resources.py` measures every block size) and compiles it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

TARGETS = (80, 90)
# Shared memory a block may use (opt-in maximum): A100 and H100/H200.
SHARED_LIMIT = {80: 166912, 90: 232448}


@pytest.fixture(scope="module")
def aot():
    """Every launch the launchers make, compiled for each target (one subprocess per target,
    run side by side)."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    script = Path(__file__).with_name("triton_compile_check.py")
    runs = [subprocess.Popen([sys.executable, str(script), str(cc)], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for cc in TARGETS]
    compiled, kernels = [], None
    for run in runs:
        out, err = run.communicate(timeout=1800)
        assert run.returncode == 0, err[-4000:]
        result = json.loads(out.strip().splitlines()[-1])
        compiled += result["compiled"]
        kernels = result["kernels"]
    return {"compiled": compiled, "kernels": kernels}


def _name(entry):
    name, cc, constexprs, _, res = entry
    return f"{name} sm_{cc} {res['dtype']} warps={res['num_warps']} {constexprs}"


@pytest.mark.triton
def test_every_kernel_compiles_for_every_target(aot):
    for cc in TARGETS:
        compiled = {name for name, target, _, _, _ in aot["compiled"] if target == cc}
        assert compiled == set(aot["kernels"]), (cc, set(aot["kernels"]) - compiled)
    # Both accumulation dtypes, both plane paths, every map dtype of the sharp attention kernels.
    forward = [(c["ACC"], c["SINGLE"], r["dtype"]) for name, _, c, _, r in aot["compiled"]
               if name == "_forward_kernel"]
    assert {(acc, single) for acc, single, _ in forward} == {
        ("fp32", "True"), ("fp32", "False"), ("fp64", "True"), ("fp64", "False")}
    assert {dtype for _, _, dtype in forward} == {"fp32", "fp16", "bf16", "fp64"}


@pytest.mark.triton
def test_shared_memory_fits_the_target(aot):
    over = [(_name(e), e[4]["shared"]) for e in aot["compiled"]
            if e[4]["shared"] > SHARED_LIMIT[e[1]]]
    assert not over, over


@pytest.mark.triton
def test_no_register_spills(aot):
    """No launch spills registers to local memory, float64 included (measured in
    benchmarks/results/triton-resources.md); float32/float16/bfloat16 must never spill."""
    spills = [(_name(e), e[4]["registers"], e[4]["spill_stores"], e[4]["spill_loads"])
              for e in aot["compiled"]
              if e[4]["spill_stores"] or e[4]["spill_loads"] or e[4]["stack"]]
    assert not spills, spills
    assert all(e[4]["registers"] <= 255 for e in aot["compiled"])


@pytest.mark.triton
def test_accurate_math_where_it_is_needed(aot):
    """The float32 backward divides the terms of the lo/hi shares with IEEE division (div.rn,
    not div.full's 2 ulp); the hard-mask decision (forward, mode "hard") is a comparison of
    log-differences: no division, no approximate exp or log in it."""
    sharp = [e for e in aot["compiled"] if e[2].get("ACC") == "fp32"]
    backward = [e for e in sharp if e[0] == "_backward_kernel" and e[2]["MODE"] != "1"]
    assert backward and all(e[4]["ptx"]["div.rn.f32"] >= 2 for e in backward)
    hard = [e for e in sharp if e[0] == "_forward_kernel" and e[2]["MODE"] == "2"]
    assert hard
    for e in hard:
        ops = e[4]["ptx"]
        assert ops["div.full.f32"] == ops["div.approx.f32"] == ops["ex2.approx"] == 0, _name(e)
        assert ops["lg2.approx"] == 0, _name(e)


@pytest.mark.triton
def test_tv_counts_plane_positions_in_64_bits(aot):
    """The TV kernels walk a plane with a 64-bit position: an int32 H * W wraps at 2^31
    positions (TV 0, the backward's output never written). The launches pass H and W as int32,
    as for any plane below 2^31 rows or columns."""
    loops = [(name, types) for name, _, _, types, _ in aot["compiled"]
             if name.startswith("_tv_")]
    assert loops and all(types == ["i64"] for _, types in loops), loops
