"""Resources of the compiled CUDA kernels, read from the cubins embedded in sharpattn._C (no GPU
and no recompilation: one cuobjdump call, about a second): no register spills, static shared
memory within the reserve that plane_access.cuh's smem_budget() leaves beside the dynamic
buffers, and every launch configuration able to start on A100 (sm_80) and H100/H200 (sm_90).

benchmarks/cuda_resources.py prints the same numbers as a table (benchmarks/results/).
"""

import shutil
import sys
from pathlib import Path

import pytest

import sharpattn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import cuda_resources as CR  # noqa: E402

# A trimmed `cuobjdump --dump-resource-usage` of a real build (sm_90, CUDA 13.2): one spilling
# kernel, one clean one, and a CUB kernel that is not ours.
SAMPLE = """
Fatbin elf code:
================
arch = sm_90
code version = [1,8]
host = linux
compile_size = 64bit

Resource usage:
 Common:
  GLOBAL:46 CONSTANT[4]:368
 Function _ZN9sharpattn4cuda57_GLOBAL__N__d6c0b86d_18_sharp_attention_cu_f3a52abb_2067821backward_plane_kernelIffEEvNS0_10StridedMapIKT_EEPKT0_S6_S6_NS3_IS4_EESA_S9_NS0_10PlaneShapeENS_10MaskParamsIS7_EEmmb:
  REG:64 STACK:16 SHARED:1536 LOCAL:0 CONSTANT[0]:633 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _ZN9sharpattn4cuda57_GLOBAL__N__d6c0b86d_18_sharp_attention_cu_f3a52abb_2067818tv_finalize_kernelIfEEvPKdllPT_:
  REG:30 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:384 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _ZN3cub6detail11EmptyKernelIvEEvv:
  REG:4 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:352 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_parser_and_occupancy_on_a_known_dump():
    kernels = CR.parse(SAMPLE)
    assert [(k.arch, k.base, k.regs, k.stack) for k in kernels] == [
        ("sm_90", "backward_plane_kernel", 64, 16), ("sm_90", "tv_finalize_kernel", 30, 0)]
    if shutil.which("c++filt"):  # without it the names stay mangled (the bases are still found)
        assert kernels[0].name == "backward_plane_kernel<float, float>"
    assert kernels[0].shared == 1536
    gpu = CR.GPUS["sm_90"]
    # 512 threads at 64 registers: 32768 registers a block, two fit in 65536; 97.5 KB of
    # shared memory a block (+1 KB system reserve): two fit in 228 KB.
    assert CR.occupancy(64, 512, 96 * 1024 + 1536, gpu)[:2] == (2, 32)
    # A100: 164 KB per SM holds only one such block.
    assert CR.occupancy(64, 512, 96 * 1024 + 512, CR.GPUS["sm_80"]) == (1, 16, "shared memory")
    # 72 registers round to 2304 a warp: 28 warps fit, one 512-thread block.
    assert CR.occupancy(72, 512, 0, gpu) == (1, 16, "registers")


@pytest.fixture(scope="module")
def kernels():
    info = sharpattn.build_info()
    if not info["cuda_kernels"]:
        pytest.skip("sharpattn._C has no CUDA kernels (a CPU-only build): no cubins to check")
    tool = CR.find_cuobjdump()
    if tool is None:
        pytest.fail("the CUDA kernels are built but no cuobjdump was found: install "
                    "'cuda-toolkit[cuobjdump]' (requirements/build.txt) or set CUOBJDUMP")
    found = CR.resource_usage(CR._default_binary(), tool)
    assert found, "sharpattn._C reports CUDA kernels but cuobjdump found none"
    return found


def _known(kernels):
    return [(k, CR.GPUS[k.arch.removesuffix("a")]) for k in kernels
            if k.arch.removesuffix("a") in CR.GPUS]


def test_cubins_for_every_built_architecture(kernels):
    arch_list = sharpattn.build_info()["cuda_arch_list"] or ""
    wanted = {"sm_" + a.replace("+PTX", "").replace(".", "") for a in arch_list.split(";") if a}
    assert wanted <= {k.arch for k in kernels}, f"built for {arch_list}"


def test_every_kernel_has_a_launch_configuration(kernels):
    missing = sorted({k.base for k in kernels} - set(CR.LAUNCH))
    assert not missing, f"add the largest launch of {missing} to benchmarks/cuda_resources.py"


def test_no_register_spills(kernels):
    spilling = [f"{k.arch} {k.name}: {k.stack} B stack, {k.local} B local" for k in kernels
                if k.stack or k.local]
    assert not spilling, "spills (raise __launch_bounds__' register room):\n" + "\n".join(spilling)


def test_static_shared_memory_within_the_reserve(kernels):
    # smem_budget() gives the dynamic buffers the opt-in limit less kStaticReserve.
    reserve = CR.smem_constants()["kStaticReserve"]
    # cuobjdump's SHARED: on sm_90 with 1 KB of reserved shared memory, which is conservative.
    over = [f"{k.arch} {k.name}: {k.shared} B" for k in kernels if k.shared > reserve]
    assert not over, f"static shared memory above kStaticReserve = {reserve} B:\n" + "\n".join(over)


def test_every_launch_fits_on_an_sm(kernels):
    bad = []
    for k, gpu in _known(kernels):
        threads, dyn = CR.launch_of(k, gpu)
        smem = k.shared + dyn
        if smem > gpu.smem_block_optin or CR.occupancy(k.regs, threads, smem, gpu)[0] < 1:
            bad.append(f"{k.arch} {k.name}: {k.regs} registers x {threads} threads, {smem} B")
    assert not bad, "launches that cannot start:\n" + "\n".join(bad)
