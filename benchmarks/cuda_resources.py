"""Per-kernel resources of the compiled CUDA kernels (registers, spills, shared memory) and the
occupancy they allow on A100 (sm_80) and H100/H200 (sm_90).

Reads the cubins already embedded in a binary (sharpattn._C, or a .fatbin / .o from nvcc) with
`cuobjdump --dump-resource-usage`: nothing is recompiled, so it costs seconds.

    python -m benchmarks.cuda_resources                      # the built sharpattn._C
    python -m benchmarks.cuda_resources --out benchmarks/results/cuda_resources.md a.fatbin ...

tests/test_cuda_resources.py checks the same numbers against the launch configuration.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLANE_ACCESS = ROOT / "csrc" / "cuda" / "plane_access.cuh"

KB = 1024


@dataclass(frozen=True)
class Gpu:
    """Per-SM limits (CUDA C Programming Guide, compute capability table)."""
    name: str
    regs: int = 65536
    max_threads: int = 2048
    max_blocks: int = 32
    smem: int = 0            # shared memory per SM usable by blocks
    smem_block_optin: int = 0  # most one block may use (cudaDevAttrMaxSharedMemoryPerBlockOptin)
    smem_reserved: int = KB  # per block, taken by the system


GPUS = {
    "sm_80": Gpu("A100", smem=164 * KB, smem_block_optin=163 * KB),
    "sm_90": Gpu("H100/H200", smem=228 * KB, smem_block_optin=227 * KB),
}


def smem_constants(path: Path = PLANE_ACCESS) -> dict[str, int]:
    """kCap, kStaticReserve and kMaxThreads as plane_access.cuh defines them (one source)."""
    text = path.read_text()
    out = {}
    for name in ("kCap", "kStaticReserve", "kMaxThreads"):
        m = re.search(rf"\b{name}\s*=\s*([\d\s*]+)[,;]", text)
        if not m:
            raise ValueError(f"{path.name}: no constant {name}")
        out[name] = math.prod(int(v) for v in m.group(1).split("*"))
    return out


def dynamic_budget(gpu: Gpu) -> int:
    """smem_budget() of plane_access.cuh on this GPU."""
    c = smem_constants()
    return min(c["kCap"], gpu.smem_block_optin - c["kStaticReserve"])


# The largest launch of each kernel: (threads per block, dynamic shared memory in bytes, a
# function of the GPU, or "chunk": kChunk = 4096 acc_t values, the tiled kernels' A with the fused
# TV). A kernel missing here fails the test: add its launch when adding it.
_PLANE_THREADS = smem_constants()["kMaxThreads"]
LAUNCH = {
    # sharp_attention.cu: one block per plane, up to kMaxThreads, plane cache up to the budget
    "forward_plane_kernel": (_PLANE_THREADS, dynamic_budget),
    "backward_plane_kernel": (_PLANE_THREADS, dynamic_budget),
    "minmax_partial_kernel": (256, 0),
    "minmax_finalize_kernel": (256, 0),
    "forward_tile_kernel": (256, "chunk"),
    "backward_partial_kernel": (256, "chunk"),
    "backward_finalize_kernel": (256, 0),
    "backward_tile_kernel": (256, "chunk"),
    "tv_finalize_kernel": (256, 0),
    # tv_loss.cu
    "tv_forward_kernel": (256, 0),
    "tv_backward_kernel": (256, 0),
    # grid_occlusion.cu: pool_kernel keeps G doubles per thread, up to the budget
    "occlusion_kernel": (256, 0),
    "occlusion_backward_kernel": (256, 0),
    "pool_kernel": (256, dynamic_budget),
    "pool_backward_values_kernel": (256, 0),
    "pool_backward_scatter_kernel": (256, 0),
    # philox_uniform.cu
    "philox_uniform_kernel": (256, 0),
}


def find_cuobjdump() -> str | None:
    """cuobjdump from $CUOBJDUMP, CUDA_HOME, the pip cuda-toolkit wheels, or PATH."""
    candidates = [os.environ.get("CUOBJDUMP")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home:
            candidates.append(os.path.join(home, "bin", "cuobjdump"))
    for site in sys.path:
        for cu in sorted(Path(site or ".").glob("nvidia/cu*/bin/cuobjdump"), reverse=True):
            candidates.append(str(cu))
    candidates += [shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump"]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


@dataclass
class Kernel:
    arch: str
    mangled: str
    name: str       # demangled, without the parameter list
    base: str       # the kernel's own name (a key of LAUNCH)
    regs: int
    stack: int      # bytes of stack frame per thread: spills (or local arrays)
    local: int
    shared: int     # static shared memory per block

    @property
    def dtypes(self) -> str:
        m = re.search(r"<(.*)>$", self.name)
        return m.group(1) if m else ""


_HEADER = re.compile(r"^arch = (sm_\d+a?)")
_FUNC = re.compile(r"^\s*Function (\S+):")
_FIELDS = re.compile(r"(REG|STACK|SHARED|LOCAL):(\d+)")


def _demangle(names: list[str]) -> list[str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True,
                         check=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def _short(demangled: str) -> tuple[str, str]:
    """(name with template arguments, bare name) of `void ns::name<args>(params)`."""
    head = demangled.replace("(anonymous namespace)::", "").split("(", 1)[0]
    head = head.removeprefix("void ").strip()
    plain = head.split("<", 1)[0]
    bare = plain.rsplit("::", 1)[-1]
    return bare + head[len(plain):], bare


def parse(text: str) -> list[Kernel]:
    """The sharpattn kernels in the output of `cuobjdump --dump-resource-usage`."""
    rows, arch, func = [], None, None
    for line in text.splitlines():
        if m := _HEADER.match(line.strip()):
            arch = m.group(1)
        elif m := _FUNC.match(line):
            func = m.group(1)
        elif func and (fields := dict(_FIELDS.findall(line))):
            if "sharpattn" in func:  # not the library kernels that come with the headers (CUB)
                rows.append((arch, func, {k: int(v) for k, v in fields.items()}))
            func = None
    names = _demangle([r[1] for r in rows])
    kernels = []
    for (arch, mangled, f), dem in zip(rows, names):
        name, base = _short(dem)
        if dem == mangled:  # no c++filt: find the kernel's length-prefixed name in the mangling
            base = next((k for k in LAUNCH if f"{len(k)}{k}" in mangled), mangled)
        kernels.append(Kernel(arch, mangled, name, base, f.get("REG", 0), f.get("STACK", 0),
                              f.get("LOCAL", 0), f.get("SHARED", 0)))
    return kernels


def resource_usage(binary: str | Path, cuobjdump: str | None = None) -> list[Kernel]:
    tool = cuobjdump or find_cuobjdump()
    if tool is None:
        raise FileNotFoundError("no cuobjdump: install the cuda-toolkit[cuobjdump] wheel")
    return parse(subprocess.run([tool, "--dump-resource-usage", str(binary)],
                                capture_output=True, text=True, check=True).stdout)


def launch_of(kernel: Kernel, gpu: Gpu) -> tuple[int, int]:
    """(threads, dynamic shared bytes) of the kernel's largest launch on `gpu`."""
    threads, dyn = LAUNCH[kernel.base]
    if dyn == "chunk":
        dyn = 4096 * (8 if kernel.dtypes.endswith("double") else 4)
    elif callable(dyn):
        dyn = dyn(gpu)
    return threads, dyn


def occupancy(regs: int, threads: int, smem_block: int, gpu: Gpu) -> tuple[int, int, str]:
    """(blocks per SM, warps per SM, the limiting resource) of one launch configuration;
    smem_block is the block's static + dynamic shared memory; the per-block system reserve is
    added here. (sm_90 cubins already count 1 KB of reserved shared memory in the SHARED of a
    kernel that uses shared memory, so there the estimate is conservative by up to 1 KB.)

    Registers are allocated per warp in units of 256 (a thread's count rounded up to 8).
    """
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    limits = {  # on a tie the first one is named
        "threads": gpu.max_threads // (warps * 32),
        "registers": (gpu.regs // regs_per_warp) // warps,
        "blocks": gpu.max_blocks,
        "shared memory": gpu.smem // (smem_block + gpu.smem_reserved),
    }
    limiter = min(limits, key=limits.get)
    blocks = limits[limiter]
    return blocks, blocks * warps, limiter


def table(kernels: list[Kernel]) -> str:
    lines = ["| arch | kernel | registers | stack (spills) | static smem | threads | "
             "dynamic smem (max) | blocks/SM | warps/SM | limited by |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for k in sorted(kernels, key=lambda k: (k.arch, k.base, k.name)):
        gpu = GPUS.get(k.arch.removesuffix("a"))
        if gpu is None or k.base not in LAUNCH:
            lines.append(f"| {k.arch} | `{k.name}` | {k.regs} | {k.stack} | {k.shared} | | | | | |")
            continue
        threads, dyn = launch_of(k, gpu)
        blocks, warps, limiter = occupancy(k.regs, threads, k.shared + dyn, gpu)
        lines.append(f"| {k.arch} ({gpu.name}) | `{k.name}` | {k.regs} | {k.stack} | "
                     f"{k.shared} | {threads} | {dyn // KB} KB | {blocks} | {warps} | "
                     f"{limiter} |")
    return "\n".join(lines) + "\n"


def _default_binary() -> str:
    import sharpattn._C as ext  # noqa: PLC0415
    return ext.__file__


NOTES = """\
Columns: registers per thread; stack = bytes of stack frame per thread (spills; 0 everywhere is
what tests/test_cuda_resources.py requires); static smem = cuobjdump's SHARED (on sm_90 it counts
1 KB of reserved shared memory); threads and dynamic smem = the kernel's largest launch
(dynamic: smem_budget() of plane_access.cuh, or 16 / 32 KB for the tiled kernels with the fused
TV); blocks/SM and warps/SM = the resident blocks and warps that registers, threads, the 32-block
limit and shared memory (with 1 KB per block for the system) allow at that launch, and the last
column the resource that sets the limit. Per SM: 65536 registers, 2048 threads; A100 164 KB
shared memory, H100/H200 228 KB.
"""


def document(kernels: list[Kernel], sources: list[str], command: str) -> str:
    tool = find_cuobjdump()
    version = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
    release = re.search(r"release [\d.]+[^\n]*", version)
    return (f"# CUDA kernel resources\n\nGenerated by `{command}` from "
            f"{', '.join(f'`{Path(s).name}`' for s in sources)} "
            f"({release.group(0) if release else 'cuobjdump'}). How to read it and what changed: "
            f"[benchmarks/README.md](../README.md#cuda-kernel-resources).\n\n"
            + NOTES + "\n" + table(kernels))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binaries", nargs="*", help="default: the built sharpattn._C")
    ap.add_argument("--out", help="write a markdown page here (default: print the table)")
    args = ap.parse_args(argv)
    sources = args.binaries or [_default_binary()]
    kernels = [k for b in sources for k in resource_usage(b)]
    if not kernels:
        print("no CUDA kernels in", ", ".join(sources), file=sys.stderr)
        return 1
    if args.out:
        command = "python -m benchmarks.cuda_resources " + " ".join(sys.argv[1:] if argv is None
                                                                     else argv)
        Path(args.out).write_text(document(kernels, sources, command.strip()))
    else:
        print(table(kernels), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
