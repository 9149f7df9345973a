"""The Triton kernels compile for the GPU (sm_90, the lent H200) with the installed Triton.

On a CPU the other Triton tests run in Triton's interpreter, which compiles nothing: a kernel
that uses an API the installed Triton lacks on the GPU (Triton 3.6 has no tl.to_tensor, say)
must fail here, on every stack CI runs. Compiling needs no GPU (Triton ships ptxas).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def sm90():
    """Every launch the launchers make, compiled for sm_90 (one subprocess for the module)."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    script = Path(__file__).with_name("triton_compile_check.py")
    run = subprocess.run([sys.executable, str(script), "90"], env=env, capture_output=True,
                         text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.triton
def test_every_kernel_compiles_for_sm90(sm90):
    compiled = {name for name, _, _, _ in sm90["compiled"]}
    assert compiled == set(sm90["kernels"]), set(sm90["kernels"]) - compiled
    # Both accumulation dtypes and both plane paths of the sharp attention kernels.
    forward = [c for name, _, c, _ in sm90["compiled"] if name == "_forward_kernel"]
    assert {(c["ACC"], c["SINGLE"]) for c in forward} == {
        ("fp32", "True"), ("fp32", "False"), ("fp64", "True"), ("fp64", "False")}


@pytest.mark.triton
def test_tv_counts_plane_positions_in_64_bits(sm90):
    """The TV kernels walk a plane with a 64-bit position: an int32 H * W wraps at 2^31
    positions (TV 0, the backward's output never written). The launches pass H and W as int32,
    as for any plane below 2^31 rows or columns."""
    loops = [(name, types) for name, _, _, types in sm90["compiled"] if name.startswith("_tv_")]
    assert loops and all(types == ["i64"] for _, types in loops), loops
