"""Compile every Triton kernel of sharpattn for real GPU targets, without a GPU, and measure it.

Run by tests/test_triton_aot.py and benchmarks/triton_resources.py in a subprocess with
TRITON_INTERPRET=0 (the test process runs Triton in its interpreter, where kernels are not
compiled). The launchers are called on meta tensors with each kernel's `run` replaced by a
recorder, so the launches are exactly the ones the launchers make (arguments, constexprs,
num_warps); each distinct one is then compiled with triton.compile for the targets given on the
command line (e.g. 80 90). Options: `--only PREFIX` compiles only the kernels whose names start
with PREFIX; `--all-blocks` launches every block size the launchers can choose (default: for each
launch path the block with the most elements per thread, the smallest, and the tiled one).

Prints one JSON line: {"compiled": [[kernel, target, constexprs, loop index types, resources],
...], "kernels": [every kernel name]}; loop index types are those of the kernel's scf.for loops in
its Triton IR (i32 or i64); resources holds the map dtype, num_warps, ptxas's registers, spill
stores/loads and stack frame (bytes per thread), the shared memory (bytes per block) and counts
of a few PTX instructions (accurate vs approximate division, exp and log).
"""

import atexit
import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile

# A fresh Triton cache, so that Triton runs ptxas (with its own flags) for every kernel and its
# log gives the registers and spills of exactly the binary a GPU would load.
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="sharpattn-aot-")
atexit.register(shutil.rmtree, os.environ["TRITON_CACHE_DIR"], ignore_errors=True)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sharpattn.kernels import grid_occlusion, philox, sharp_attention, tv_loss  # noqa: E402

MODULES = (grid_occlusion, philox, sharp_attention, tv_loss)
TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
         torch.float64: "fp64"}
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
PTX_OPS = ("div.rn.f32", "div.full.f32", "div.approx.f32", "div.rn.f64", "ex2.approx",
           "lg2.approx")


def _kernels():
    return {name: obj for module in MODULES for name, obj in vars(module).items()
            if isinstance(obj, triton.runtime.jit.JITFunction) and name.endswith("_kernel")}


def _record(launches):
    for kernel in _kernels().values():
        kernel.run = (lambda k: lambda *args, grid, warmup, **kw: launches.append((k, args, kw)))(
            kernel)


def _signature(kernel, args, kwargs):
    values = dict(zip(kernel.arg_names, args), **kwargs)
    signature, constexprs = {}, {}
    for param in kernel.params:
        value = values[param.name]
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[param.name] = value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + TYPES[value.dtype]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if -2**31 <= value < 2**31 else "i64"
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}: argument {param.name} = {value!r}")
    return signature, constexprs


def _m(*shape, dtype=torch.float32):
    return torch.empty(shape, device="meta", dtype=dtype)


def _sizes(largest, all_blocks):
    """Plane sizes 16, 32, ..., largest (all_blocks) or just 16 and largest."""
    sizes = [16 << i for i in range(largest.bit_length()) if 16 << i <= largest]
    return sizes if all_blocks else sorted({16, largest})


def _sharp_attention(dtype, all_blocks):
    """The register-heaviest variant (separate x, mask and TV written) at every plane path."""
    acc = dtype if dtype == torch.float64 else torch.float32
    per_thread = sharp_attention.ELEMENTS_PER_THREAD // (2 if dtype == torch.float64 else 1)
    cap = sharp_attention.MAX_WARPS * 32 * per_thread
    # One block per plane; per_thread * 32 is the largest plane of one warp (all_blocks or not);
    # cap + 1 is tiled.
    for hw in sorted(set(_sizes(cap, all_blocks)) | {per_thread * 32, cap + 1}):
        t = _m(1, 2, 1, hw, dtype=dtype)
        sharp_attention.forward(t, t, 0.5, 1, 0, "sample", True, 1e-6, True, True)
        sharp_attention.backward(t, _m(1, 2, dtype=acc), t, t, _m(1, 2, 2, dtype=acc), 0.5, 1, 0,
                                 "hard", True, 1e-6)
    if dtype == torch.float32:  # every other constexpr value once, on a small plane
        t = _m(1, 2, 4, 4)
        for mode in ("mean", "hard"):
            sharp_attention.forward(t, None, 0.5, 1, 0, mode, False, 1e-6, False, False)
        for mode in ("sample", "mean"):
            sharp_attention.backward(t, None, t, None, _m(1, 2, 2), 0.5, 1, 0, mode, False, 1e-6)


def _launch_everything(all_blocks=False):
    for dtype in DTYPES:
        acc = dtype if dtype == torch.float64 else torch.float32
        _sharp_attention(dtype, all_blocks)
        for hw in _sizes(tv_loss.TILE, all_blocks):
            t = _m(1, 2, 1, hw, dtype=dtype)
            tv_loss.tv_per_plane(t)
            tv_loss.tv_per_plane_backward(_m(1, 2, dtype=acc), t)
        t = _m(2, 3, 5, 7, dtype=dtype)
        grid_occlusion.grid_occlusion(t, 2, 2)
        grid_occlusion.grid_occlusion_backward(_m(2, 4, 3, 5, 7, dtype=dtype), 2, 2)
        # Pool tiles: each cell count with its largest tile (1 cell: the most positions).
        cells = [1 << i for i in range(grid_occlusion.MAX_CELLS.bit_length())]
        for g in (cells if all_blocks else (1, 16, grid_occlusion.MAX_CELLS)):
            t = _m(1, 2, g, 4096, dtype=dtype)
            grid_occlusion.grid_occlusion_pool(t, g, 1)
            grid_occlusion.grid_occlusion_pool_backward(_m(1, g, 2, dtype=dtype), t, g, 1)
        if dtype in (torch.float32, torch.float64):  # the uniforms are float32 or float64
            philox.philox_uniform_out(_m(4, 10, dtype=dtype), 1, 0)


def _ptxas_log(compile_fn):
    """Run compile_fn with Triton's ptxas log printed (TRITON_DUMP_PTXAS_LOG), return both."""
    knobs = triton.knobs
    old = knobs.nvidia.dump_ptxas_log
    knobs.nvidia.dump_ptxas_log = True
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            binary = compile_fn()
    finally:
        knobs.nvidia.dump_ptxas_log = old
    return binary, out.getvalue()


def _resources(binary, log, cc, dtype, warps):
    if "Used" not in log:
        raise RuntimeError(f"no ptxas log for a kernel for sm_{cc} (a Triton cache hit?)")
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
                       r"loads", log)
    ptx = binary.asm["ptx"]
    return {"dtype": dtype, "num_warps": warps, "registers": int(regs.group(1)),
            "stack": int(spills.group(1)), "spill_stores": int(spills.group(2)),
            "spill_loads": int(spills.group(3)), "shared": int(binary.metadata.shared),
            "ptx": {op: ptx.count(op) for op in PTX_OPS}}


MAP_ARGS = ("a_ptr", "x_ptr", "g_ptr", "out_ptr")  # the feature map of each kernel, by name


def _map_dtype(signature):
    """The dtype of the feature map the kernel works on (not of a per-plane argument)."""
    return next(signature[name][1:] for name in MAP_ARGS if name in signature)


def main(targets, only="", all_blocks=False):
    launches = []
    _record(launches)
    _launch_everything(all_blocks)
    compiled, seen = [], set()
    for kernel, args, kwargs in launches:
        if not kernel.__name__.startswith(only):
            continue
        signature, constexprs = _signature(kernel, args, kwargs)
        warps = kwargs.get("num_warps", 4)  # Triton's default
        key = (kernel.__name__, json.dumps(signature), json.dumps(constexprs, default=str), warps)
        if key in seen:
            continue
        seen.add(key)
        for cc in targets:
            binary, log = _ptxas_log(lambda: triton.compile(
                ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", cc, 32),
                options={"num_warps": warps}))
            loops = re.findall(r"scf\.for .* : (i\d+)", binary.asm["ttir"])
            compiled.append([kernel.__name__, cc, {k: str(v) for k, v in constexprs.items()},
                             loops, _resources(binary, log, cc, _map_dtype(signature), warps)])
    print(json.dumps({"compiled": compiled, "kernels": sorted(_kernels())}))


if __name__ == "__main__":
    args = sys.argv[1:]
    prefix = args[args.index("--only") + 1] if "--only" in args else ""
    main([int(cc) for cc in args if cc.isdigit()], prefix, "--all-blocks" in args)
