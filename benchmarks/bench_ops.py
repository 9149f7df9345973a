"""Operator suites: sharp_attention (with and without the fused TV), tv_loss, grid_occlusion and
grid_occlusion_pool, forward ("fwd") and forward + backward ("fwdbwd"), on the SAN block shapes,
for every backend of the device, the eager reference and torch.compile of the reference.

    python -m pytest benchmarks/bench_ops.py --benchmark-only            # see benchmarks/README.md

Implementations (the ``impl`` parameter):
  reference  eager PyTorch, sharpattn.reference (through sharpattn.functional, backend=...);
             for grid_occlusion_pool this is "materialise the G copies + mean", the baseline the
             issue's 16x target is measured against
  compile    torch.compile of the reference (inductor, static shapes); for sharp_attention the
             Philox noise is an input by default (see common.reference_given_noise)
  cpu, cuda, triton   the compiled backends, through sharpattn.functional with backend=...
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import common, traffic
from sharpattn import functional as F
from sharpattn import reference

torch._dynamo.config.recompile_limit = 4096
torch._dynamo.config.accumulated_recompile_limit = 1 << 20


def _compile(fn):
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


def _run(benchmark, request, env, opts, case, info, impl):
    benchmark.group = (f"{info['op']} {info['variant']} block{info['block']} {info['dtype']} "
                       f"{info['layout']} {info['pass']}").replace("  ", " ")
    try:
        case.prepare()
    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
        if impl != "compile":
            raise
        common.skip(request, f"torch.compile failed: {type(exc).__name__}: {str(exc)[:500]}", "error")
    common.run_case(benchmark, env, case, rounds=opts.rounds, warmup=opts.warmup, info=info)


def _info(op, variant, block, shape, dtype_name, layout, pass_, impl, nbytes, **extra):
    info = {"suite": "ops", "op": op, "variant": variant, "block": block, "shape": list(shape),
            "dtype": dtype_name, "layout": layout, "pass": pass_, "impl": impl,
            "traffic_bytes": nbytes}
    info.update(extra)
    return info


@pytest.mark.parametrize("tv", [False, True], ids=["no_tv", "tv"])
def test_sharp_attention(benchmark, request, env, opts, device, impl_available, block,
                         dtype_name, layout, mask_input, tv, pass_, impl):
    impl_available(impl, request)
    shape = common.block_shape(block, opts.batch)
    dtype = common.DTYPES[dtype_name]
    grad = pass_ == "fwdbwd"
    t = common.feature_map(shape, dtype, layout, device, seed=0).requires_grad_(grad)
    x = None
    if mask_input == "x":
        x = common.feature_map(shape, dtype, layout, device, seed=1).requires_grad_(grad)
    inputs = (t, x)
    extra = {}
    if impl == "compile" and opts.compile_philox:
        def full(t, x):
            out, _, tv_ = reference.sharp_attention(t, x, tau=common.TAU, seed=common.SEED,
                                                    return_tv=tv)
            return (out, tv_) if tv else (out,)
        fn = _compile(full)
        extra["compile_note"] = "whole reference compiled, Philox included"
    elif impl == "compile":
        noise = reference.logistic_noise(shape, seed=common.SEED, device=device).to(dtype)
        if layout == "channels_last":
            noise = noise.contiguous(memory_format=torch.channels_last)
        compiled = _compile(common.reference_given_noise)

        def fn(t, x, noise):
            return compiled(t, x, noise, tau=common.TAU, return_tv=tv)
        inputs = (t, x, noise)
        extra["compile_note"] = "reference formula compiled with the logistic noise as an input"
    else:
        def fn(t, x):
            return F.sharp_attention(t, x, tau=common.TAU, seed=common.SEED, return_tv=tv,
                                     backend=impl)
    variant = ("x_is_t" if x is None else "x_separate") + (",tv" if tv else "")
    nbytes = traffic.min_traffic("sharp_attention", shape, dtype_name, pass_,
                                 separate_x=x is not None, tv=tv)
    info = _info("sharp_attention", variant, block, shape, dtype_name, layout, pass_, impl,
                 nbytes, **extra)
    _run(benchmark, request, env, opts, common.Case(fn, inputs, pass_, device), info, impl)


_SIMPLE_OPS = {
    "tv_loss": (F.tv_loss, reference.tv_loss, {}),
    "grid_occlusion": (F.grid_occlusion, reference.grid_occlusion, {"grid": common.GRID}),
    "grid_occlusion_pool": (F.grid_occlusion_pool, reference.grid_occlusion_pool,
                            {"grid": common.GRID}),
}


@pytest.mark.parametrize("op", list(_SIMPLE_OPS))
def test_op(benchmark, request, env, opts, device, impl_available, op, block, dtype_name, layout,
            pass_, impl):
    impl_available(impl, request)
    shape = common.block_shape(block, opts.batch)
    dtype = common.DTYPES[dtype_name]
    a = common.feature_map(shape, dtype, layout, device).requires_grad_(pass_ == "fwdbwd")
    public, ref, kwargs = _SIMPLE_OPS[op]
    if impl == "compile":
        fn = _compile(ref)
        call = (lambda a: fn(a, common.GRID)) if kwargs else fn
    else:
        def call(a):
            return public(a, **kwargs, backend=impl)
    extra = {}
    if op == "grid_occlusion_pool" and impl == "reference":
        extra["baseline"] = "materialise + mean"
    variant = f"grid{common.GRID[0]}x{common.GRID[1]}" if kwargs else ""
    nbytes = traffic.min_traffic(op, shape, dtype_name, pass_, grid=common.GRID)
    info = _info(op, variant, block, shape, dtype_name, layout, pass_, impl, nbytes, **extra)
    _run(benchmark, request, env, opts, common.Case(call, (a,), pass_, device), info, impl)
