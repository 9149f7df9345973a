"""Compile every Triton kernel of sharpattn for a real GPU target, without a GPU.

Run by tests/test_triton_compile.py in a subprocess with TRITON_INTERPRET=0 (the test process
runs Triton in its interpreter, where kernels are not compiled). The launchers are called on
meta tensors with each kernel's `run` replaced by a recorder, so the launches are exactly the
ones the launchers make (arguments, constexprs, num_warps); each is then compiled with
triton.compile for the targets given on the command line (e.g. 80 90; `--only PREFIX` compiles
only the kernels whose names start with PREFIX). Prints one JSON line: {"compiled": [[kernel,
target, constexprs, loop index types], ...], "kernels": [every kernel name]}, where the loop
index types are those of the kernel's scf.for loops in its Triton IR (i32 or i64).
"""

import json
import re
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sharpattn.kernels import grid_occlusion, philox, sharp_attention, tv_loss

MODULES = (grid_occlusion, philox, sharp_attention, tv_loss)
TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
         torch.float64: "fp64"}


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


def _launch_everything():
    """Every kernel at least once for float32, float64 and bfloat16 maps, and the sharp
    attention kernels on single-block and tiled planes."""
    def m(*shape, dtype=torch.float32):
        return torch.empty(shape, device="meta", dtype=dtype)

    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        acc = dtype if dtype == torch.float64 else torch.float32
        for shape in ((2, 3, 5, 7), (1, 2, 100, 100)):  # one block per plane, then tiled
            t = m(*shape, dtype=dtype)
            N, C = shape[:2]
            sharp_attention.forward(t, t, 0.5, 1, 0, "sample", True, 1e-6, True, True)
            sharp_attention.backward(t, m(N, C, dtype=acc), t, t, m(N, C, 2, dtype=acc), 0.5,
                                     1, 0, "hard", True, 1e-6)
        t = m(2, 3, 5, 7, dtype=dtype)
        tv_loss.tv_per_plane(t)
        tv_loss.tv_per_plane_backward(m(2, 3, dtype=acc), t)
        grid_occlusion.grid_occlusion(t, 2, 2)
        grid_occlusion.grid_occlusion_backward(m(2, 4, 3, 5, 7, dtype=dtype), 2, 2)
        grid_occlusion.grid_occlusion_pool(t, 2, 2)
        grid_occlusion.grid_occlusion_pool_backward(m(2, 4, 3, dtype=dtype), t, 2, 2)
        if dtype != torch.bfloat16:  # the uniforms are float32 or float64
            philox.philox_uniform_out(m(4, 10, dtype=dtype), 1, 0)


def main(targets, only=""):
    launches = []
    _record(launches)
    _launch_everything()
    compiled = []
    for kernel, args, kwargs in launches:
        if not kernel.__name__.startswith(only):
            continue
        signature, constexprs = _signature(kernel, args, kwargs)
        options = {"num_warps": kwargs["num_warps"]} if "num_warps" in kwargs else {}
        for cc in targets:
            binary = triton.compile(ASTSource(kernel, signature, constexprs),
                                    target=GPUTarget("cuda", cc, 32), options=options)
            loops = re.findall(r"scf\.for .* : (i\d+)", binary.asm["ttir"])
            compiled.append([kernel.__name__, cc, {k: str(v) for k, v in constexprs.items()},
                             loops])
    print(json.dumps({"compiled": compiled, "kernels": sorted(_kernels())}))


if __name__ == "__main__":
    args = sys.argv[1:]
    prefix = args[args.index("--only") + 1] if "--only" in args else ""
    main([int(cc) for cc in args if cc.isdigit()], prefix)
