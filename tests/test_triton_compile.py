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


@pytest.mark.triton
def test_every_kernel_compiles_for_sm90():
    env = dict(os.environ, TRITON_INTERPRET="0")
    script = Path(__file__).with_name("triton_compile_check.py")
    run = subprocess.run([sys.executable, str(script), "90"], env=env, capture_output=True,
                         text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    compiled = {name for name, _, _ in report["compiled"]}
    assert compiled == set(report["kernels"]), set(report["kernels"]) - compiled
    # Both accumulation dtypes and both plane paths of the sharp attention kernels.
    forward = [c for name, _, c in report["compiled"] if name == "_forward_kernel"]
    assert {(c["ACC"], c["SINGLE"]) for c in forward} == {
        ("fp32", "True"), ("fp32", "False"), ("fp64", "True"), ("fp64", "False")}
