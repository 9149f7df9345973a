"""Triton kernels of the sharp attention operator (docs/spec.md section 2), same semantics as
the C++ ones.

Layout: one program per plane p = n*C + c. A plane of at most MAX_WARPS * 32 * ELEMENTS_PER_THREAD
positions (half that for float64) is held in registers as one power-of-two block: x is read once,
reduced to (lo, hi), and the mask, the output (and in the backward the per-element derivatives
and the lo/hi shares) are computed from the same registers. A larger plane is walked in tiles of
that size: a min/max (or gradient-sum) pass, then a pass that recomputes and writes.

Every tensor is read and written through its own four strides (channels_last and sliced views
need no copy), with 64-bit offsets. The noise is recomputed from (seed, offset), never stored;
the backward reads only t, x, grad_out and the per-plane (lo, hi) statistics.

Fused TV (docs/spec.md section 2b): with return_tv the forward also gives each plane's total
variation of A = M T, and the backward takes its gradient. A value needs its neighbours' A,
which live in other threads' registers, so each program writes its plane's A (compute dtype) to
a scratch buffer, waits at a block barrier, and reads the neighbours back (from cache: the plane
was just written).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .common import accumulation_dtype, launcher
from .philox import logistic_from_words, philox_words

MODES = {"sample": 0, "mean": 1, "hard": 2}
# Launch shape (see _launch_config): at most ELEMENTS_PER_THREAD positions per thread (half of it
# for float64, whose values take two registers) and at most MAX_WARPS warps, so each thread may
# use all 255 registers (65536 per SM / 256 threads). More positions per thread, or 16 warps
# (128 registers each), made the backward spill on sm_80/sm_90 (benchmarks/results/
# triton-resources.md). A plane up to MAX_WARPS * 32 * ELEMENTS_PER_THREAD positions is one block.
ELEMENTS_PER_THREAD = 8
MAX_WARPS = 8


# --------------------------------------------------------------------------------------------
# Per-element math (csrc/common/sharp_mask.h)
# --------------------------------------------------------------------------------------------

@triton.jit
def _scalar(hi, mid, lo, ACC: tl.constexpr):
    """A float64 host scalar sent as three float32 parts (kernels take float32 scalars only).

    The parts hold 72 significant bits, so their float64 sum is the original value exactly;
    float32 compute uses the first part, the float32 rounding of the value.
    tl.full([], v, dtype) casts both a compiled float32 argument and the interpreter's plain
    Python float (exactly: each part is a float32 value), in Triton 3.6 and 3.9 alike
    (tl.to_tensor is not exported by Triton 3.6).
    """
    if ACC == tl.float64:
        return (tl.full([], hi, tl.float64) + tl.full([], mid, tl.float64)) \
            + tl.full([], lo, tl.float64)
    else:
        return tl.full([], hi, tl.float32)


@triton.jit
def _plane_offsets(n, c, j, W, s0, s1, s2, s3):
    """int64 memory offsets of flat positions j (= h*W + w) of plane (n, c) for given strides."""
    j = j.to(tl.int64)
    return n * s0 + c * s1 + (j // W) * s2 + (j % W) * s3


@triton.jit
def _noise(seed, first_counter, ACC: tl.constexpr, BLOCK: tl.constexpr, MODE: tl.constexpr):
    """Logistic noise of BLOCK consecutive positions (zero in mean mode, which has none)."""
    if MODE == 1:
        return tl.zeros([BLOCK], ACC)
    else:
        return logistic_from_words(philox_words(seed, first_counter, BLOCK), ACC)


@triton.jit
def _sigmoid(v):
    """On a GPU tl.exp is ex2.approx.f32 (after a scaling by log2 e) and `/` is div.full.f32
    (2 ulp): both are kept. The sigmoid's relative error is at most exp(-v)'s, about
    2^-22 (1 + |v|), times exp(-v) / (1 + exp(-v)) < 1, so its absolute error stays below 1e-6,
    inside the tests' 2e-6; and no decision depends on it (the hard mask compares z)."""
    return 1.0 / (1.0 + tl.exp(-v))


@triton.jit
def _div_rn(x, y):
    """x / y rounded to nearest: div.rn.f32 for float32 (tl.math.div_rn takes float32 only);
    a float64 `/` is already div.rn.f64."""
    if x.dtype == tl.float64:
        return x / y
    else:
        return tl.math.div_rn(x, y)


@triton.jit
def _step(z, dtype: tl.constexpr):
    """1[z > 0]; NaN where z is NaN (a NaN plane stays NaN, as the reference's straight-through
    step + (soft - soft) does). The decision compares z = log a - log b + L: no division, no
    exp, and tl.log is libdevice's accurate logf inlined (no lg2.approx), so it is decided as
    accurately as on the CPU (tests/test_triton_aot.py checks the PTX)."""
    return tl.where(z > 0, 1.0, tl.where(z == z, 0.0, z)).to(dtype)


@triton.jit
def _nan_to_stats(lo, hi, has_nan):
    """The plane's (lo, hi), both NaN when the plane holds a NaN: tl.min/tl.max ignore NaN, the
    reference's amin/amax propagate it, and a NaN lo/hi makes every output of the plane NaN."""
    lo = tl.where(has_nan, float("nan"), lo)
    hi = tl.where(has_nan, float("nan"), hi)
    return lo, hi


@triton.jit
def _mask_value(x, noise, lo, hi, denom, eps, inv_tau, MODE: tl.constexpr):
    """M of docs/spec.md section 2: p (mean), sigmoid((logit + L) / tau) (sample) or
    1[logit + L > 0] (hard).

    p's `/` is div.full.f32 on a GPU: 2 ulp of a value in (0, 1) is below 2.4e-7, well inside
    the tests' 2e-6, and nothing is decided or summed from it."""
    a = (x - lo) + eps  # distance above the minimum, never 0
    if MODE == 1:
        return a / denom
    else:
        b = (hi - x) + eps  # distance below the maximum, never 0
        z = (tl.log(a) - tl.log(b)) + noise
        if MODE == 2:
            return _step(z, x.dtype)
        else:
            return _sigmoid(z * inv_tau)


@triton.jit
def _gate(m, t, RESIDUAL: tl.constexpr):
    """F = (1 + M) T (eq. 2) or M T (eq. 1)."""
    if RESIDUAL:
        return (1.0 + m) * t
    else:
        return m * t


@triton.jit
def _element_grad(g, g_attn, x, t, noise, lo, hi, denom, eps, inv_tau, MODE: tl.constexpr,
                  RESIDUAL: tl.constexpr, TV: tl.constexpr):
    """(dT, dX with lo and hi held fixed, contribution to dL/dlo, to dL/dhi) of each element.

    g = dL/dF, g_attn = dL/dA (A = M T, used only when TV). Hard mode is straight-through: the
    value is the step, the gradient the relaxed sample's.
    """
    a = (x - lo) + eps
    b = (hi - x) + eps
    if TV:
        g_mask = (g + g_attn) * t  # F and A both depend on M through a factor T
    else:
        g_mask = g * t
    if MODE == 1:
        m = a / denom
        q = g_mask / denom
        dx = q
        dlo = -q * (b / denom)
        dhi = -q * (a / denom)
    else:
        z = (tl.log(a) - tl.log(b)) + noise
        soft = _sigmoid(z * inv_tau)
        if MODE == 2:
            m = _step(z, x.dtype)
        else:
            m = soft
        g_z = g_mask * soft * (1.0 - soft) * inv_tau
        # IEEE division (div.rn, not the 2-ulp div.full of `/`): g_a and g_b are also the terms
        # of the lo/hi shares, sums that cancel large terms and so magnify each term's error.
        g_a = _div_rn(g_z, a)
        g_b = _div_rn(g_z, b)
        dx = g_a + g_b
        dlo = -g_a
        dhi = -g_b
    if RESIDUAL:
        dt = g * (1.0 + m)
    else:
        dt = g * m
    if TV:
        dt += g_attn * m
    return dt, dx, dlo, dhi


@triton.jit
def _tv_terms(a_plane, j, valid, W, HW):
    """Squared differences of positions j with their lower and right neighbours (eq. 6)."""
    j = j.to(tl.int64)
    a = tl.load(a_plane + j, mask=valid, other=0.0)
    has_down = valid & (j + W < HW)
    has_right = valid & (j % W < W - 1)
    d_down = tl.where(has_down, tl.load(a_plane + j + W, mask=has_down, other=0.0) - a, 0.0)
    d_right = tl.where(has_right, tl.load(a_plane + j + 1, mask=has_right, other=0.0) - a, 0.0)
    return d_down * d_down + d_right * d_right


@triton.jit
def _tv_grad(a_plane, j, valid, W, HW):
    """dTV/dA at positions j (eq. 7): twice the sum of (A - neighbour) over existing neighbours."""
    j = j.to(tl.int64)
    w = j % W
    a = tl.load(a_plane + j, mask=valid, other=0.0)
    up = valid & (j >= W)
    down = valid & (j + W < HW)
    left = valid & (w > 0)
    right = valid & (w < W - 1)
    s = tl.where(up, a - tl.load(a_plane + j - W, mask=up, other=0.0), 0.0) \
        + tl.where(down, a - tl.load(a_plane + j + W, mask=down, other=0.0), 0.0) \
        + tl.where(left, a - tl.load(a_plane + j - 1, mask=left, other=0.0), 0.0) \
        + tl.where(right, a - tl.load(a_plane + j + 1, mask=right, other=0.0), 0.0)
    return 2.0 * s


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------

@triton.jit
def _load(ptr, n, c, j, valid, W, s0, s1, s2, s3, ACC: tl.constexpr):
    """Positions j of plane (n, c) of a strided map, in the compute dtype (0 where not valid)."""
    return tl.load(ptr + _plane_offsets(n, c, j, W, s0, s1, s2, s3), mask=valid,
                   other=0.0).to(ACC)


@triton.jit(do_not_specialize=["seed", "offset"])
def _forward_kernel(
    t_ptr, x_ptr, out_ptr, mask_ptr, stats_ptr, tv_ptr, scratch_ptr,
    C, W, HW, G, seed, offset,
    eps_hi, eps_mid, eps_lo, itau_hi, itau_mid, itau_lo,
    ts0, ts1, ts2, ts3, xs0, xs1, xs2, xs3,
    os0, os1, os2, os3, ms0, ms1, ms2, ms3,
    ACC: tl.constexpr, MODE: tl.constexpr, RESIDUAL: tl.constexpr, SEPARATE_X: tl.constexpr,
    WRITE_MASK: tl.constexpr, TV: tl.constexpr, SINGLE: tl.constexpr, BLOCK: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    n = p // C
    c = p % C
    eps = _scalar(eps_hi, eps_mid, eps_lo, ACC)
    inv_tau = _scalar(itau_hi, itau_mid, itau_lo, ACC)
    first_counter = offset + p * G  # counter of the plane's first four positions
    a_plane = scratch_ptr + p * HW  # this plane's A = M T (TV only)
    lanes = tl.arange(0, BLOCK)

    if SINGLE:
        valid = lanes < HW
        x = _load(x_ptr, n, c, lanes, valid, W, xs0, xs1, xs2, xs3, ACC)
        lo = tl.min(tl.where(valid, x, float("inf")), axis=0)
        hi = tl.max(tl.where(valid, x, float("-inf")), axis=0)
        lo, hi = _nan_to_stats(lo, hi, tl.max((x != x).to(tl.int32), axis=0) > 0)
        x = tl.where(valid, x, lo)  # padding lanes: keep their (unused) logs finite
        if SEPARATE_X:
            t = _load(t_ptr, n, c, lanes, valid, W, ts0, ts1, ts2, ts3, ACC)
        else:
            t = x
        denom = (hi - lo) + 2 * eps
        noise = _noise(seed, first_counter, ACC, BLOCK, MODE)
        m = _mask_value(x, noise, lo, hi, denom, eps, inv_tau, MODE)
        o_off = _plane_offsets(n, c, lanes, W, os0, os1, os2, os3)
        tl.store(out_ptr + o_off, _gate(m, t, RESIDUAL).to(out_ptr.dtype.element_ty), mask=valid)
        if WRITE_MASK:
            m_off = _plane_offsets(n, c, lanes, W, ms0, ms1, ms2, ms3)
            tl.store(mask_ptr + m_off, m.to(mask_ptr.dtype.element_ty), mask=valid)
        if TV:
            tl.store(a_plane + lanes, m * t, mask=valid)
            tl.debug_barrier()  # every thread's A is written before any neighbour is read
            tv = tl.sum(_tv_terms(a_plane, lanes, valid, W, HW), axis=0)
    else:
        # Pass 1: lane-wise running min/max, reduced once at the end.
        lo_run = tl.full([BLOCK], float("inf"), ACC)
        hi_run = tl.full([BLOCK], float("-inf"), ACC)
        nan_run = tl.zeros([BLOCK], tl.int32)
        for start in range(0, HW, BLOCK):
            j = start + lanes
            valid = j < HW
            x = _load(x_ptr, n, c, j, valid, W, xs0, xs1, xs2, xs3, ACC)
            lo_run = tl.minimum(lo_run, tl.where(valid, x, float("inf")))
            hi_run = tl.maximum(hi_run, tl.where(valid, x, float("-inf")))
            nan_run |= (x != x).to(tl.int32)  # invalid lanes load 0
        lo, hi = _nan_to_stats(tl.min(lo_run, axis=0), tl.max(hi_run, axis=0),
                               tl.max(nan_run, axis=0) > 0)
        denom = (hi - lo) + 2 * eps
        # Pass 2: mask and output, tile by tile.
        for start in range(0, HW, BLOCK):
            j = start + lanes
            valid = j < HW
            x = tl.where(valid, _load(x_ptr, n, c, j, valid, W, xs0, xs1, xs2, xs3, ACC), lo)
            if SEPARATE_X:
                t = _load(t_ptr, n, c, j, valid, W, ts0, ts1, ts2, ts3, ACC)
            else:
                t = x
            noise = _noise(seed, first_counter + start // 4, ACC, BLOCK, MODE)
            m = _mask_value(x, noise, lo, hi, denom, eps, inv_tau, MODE)
            tl.store(out_ptr + _plane_offsets(n, c, j, W, os0, os1, os2, os3),
                     _gate(m, t, RESIDUAL).to(out_ptr.dtype.element_ty), mask=valid)
            if WRITE_MASK:
                tl.store(mask_ptr + _plane_offsets(n, c, j, W, ms0, ms1, ms2, ms3),
                         m.to(mask_ptr.dtype.element_ty), mask=valid)
            if TV:
                tl.store(a_plane + j, m * t, mask=valid)
        if TV:
            # Pass 3: TV of the plane's A, read back from the scratch buffer.
            tl.debug_barrier()
            tv_run = tl.zeros([BLOCK], ACC)
            for start in range(0, HW, BLOCK):
                j = start + lanes
                tv_run += _tv_terms(a_plane, j, j < HW, W, HW)
            tv = tl.sum(tv_run, axis=0)
    tl.store(stats_ptr + 2 * p, lo)
    tl.store(stats_ptr + 2 * p + 1, hi)
    if TV:
        tl.store(tv_ptr + p, tv)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------

@triton.jit
def _share(total, count):
    """The min/max gradient split evenly among the tied elements (torch.amin/amax autograd).

    total is summed in float64, as the C++ kernels do: it adds every element's dL/dlo (or
    dL/dhi), terms of both signs and far larger than their sum, so float32 lost its digits."""
    return tl.where(count > 0, total / tl.maximum(count, 1).to(total.dtype), 0.0)


@triton.jit
def _tile_grad(g_ptr, t_ptr, x_ptr, a_plane, n, c, j, valid, W, HW, first_counter, seed,
               lo, hi, denom, eps, inv_tau, gtv,
               gs0, gs1, gs2, gs3, ts0, ts1, ts2, ts3, xs0, xs1, xs2, xs3,
               ACC: tl.constexpr, MODE: tl.constexpr, RESIDUAL: tl.constexpr,
               SEPARATE_X: tl.constexpr, TV: tl.constexpr, BLOCK: tl.constexpr):
    """x and the element derivatives of BLOCK positions j (first_counter: that of j[0])."""
    x = tl.where(valid, _load(x_ptr, n, c, j, valid, W, xs0, xs1, xs2, xs3, ACC), lo)
    if SEPARATE_X:
        t = _load(t_ptr, n, c, j, valid, W, ts0, ts1, ts2, ts3, ACC)
    else:
        t = x
    g = _load(g_ptr, n, c, j, valid, W, gs0, gs1, gs2, gs3, ACC)
    noise = _noise(seed, first_counter, ACC, BLOCK, MODE)
    if TV:
        g_attn = gtv * _tv_grad(a_plane, j, valid, W, HW)
    else:
        g_attn = g  # unused
    dt, dx, dlo, dhi = _element_grad(g, g_attn, x, t, noise, lo, hi, denom, eps, inv_tau, MODE,
                                     RESIDUAL, TV)
    return x, dt, dx, dlo, dhi


@triton.jit
def _store_grads(gt_ptr, gx_ptr, n, c, j, valid, W, dt, dx,
                 dts0, dts1, dts2, dts3, dxs0, dxs1, dxs2, dxs3, SEPARATE_X: tl.constexpr):
    if SEPARATE_X:
        tl.store(gx_ptr + _plane_offsets(n, c, j, W, dxs0, dxs1, dxs2, dxs3),
                 dx.to(gx_ptr.dtype.element_ty), mask=valid)
    else:
        dt += dx  # x is t: both gradient paths reach t
    tl.store(gt_ptr + _plane_offsets(n, c, j, W, dts0, dts1, dts2, dts3),
             dt.to(gt_ptr.dtype.element_ty), mask=valid)


@triton.jit(do_not_specialize=["seed", "offset"])
def _backward_kernel(
    g_ptr, t_ptr, x_ptr, stats_ptr, gtv_ptr, scratch_ptr, gt_ptr, gx_ptr,
    C, W, HW, G, seed, offset,
    eps_hi, eps_mid, eps_lo, itau_hi, itau_mid, itau_lo,
    gs0, gs1, gs2, gs3, ts0, ts1, ts2, ts3, xs0, xs1, xs2, xs3,
    dts0, dts1, dts2, dts3, dxs0, dxs1, dxs2, dxs3,
    ACC: tl.constexpr, MODE: tl.constexpr, RESIDUAL: tl.constexpr, SEPARATE_X: tl.constexpr,
    TV: tl.constexpr, SINGLE: tl.constexpr, BLOCK: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    n = p // C
    c = p % C
    eps = _scalar(eps_hi, eps_mid, eps_lo, ACC)
    inv_tau = _scalar(itau_hi, itau_mid, itau_lo, ACC)
    lo = tl.load(stats_ptr + 2 * p)
    hi = tl.load(stats_ptr + 2 * p + 1)
    denom = (hi - lo) + 2 * eps
    first_counter = offset + p * G
    a_plane = scratch_ptr + p * HW
    lanes = tl.arange(0, BLOCK)
    if TV:
        gtv = tl.load(gtv_ptr + p)
        # dL/dA at a position needs A at its neighbours: recompute the plane's A = M T first.
        for start in range(0, HW, BLOCK):
            j = start + lanes
            valid = j < HW
            x = tl.where(valid, _load(x_ptr, n, c, j, valid, W, xs0, xs1, xs2, xs3, ACC), lo)
            if SEPARATE_X:
                t = _load(t_ptr, n, c, j, valid, W, ts0, ts1, ts2, ts3, ACC)
            else:
                t = x
            noise = _noise(seed, first_counter + start // 4, ACC, BLOCK, MODE)
            m = _mask_value(x, noise, lo, hi, denom, eps, inv_tau, MODE)
            tl.store(a_plane + j, m * t, mask=valid)
        tl.debug_barrier()
    else:
        gtv = lo  # unused

    if SINGLE:
        valid = lanes < HW
        x, dt, dx, dlo, dhi = _tile_grad(
            g_ptr, t_ptr, x_ptr, a_plane, n, c, lanes, valid, W, HW, first_counter, seed,
            lo, hi, denom, eps, inv_tau, gtv, gs0, gs1, gs2, gs3, ts0, ts1, ts2, ts3,
            xs0, xs1, xs2, xs3, ACC, MODE, RESIDUAL, SEPARATE_X, TV, BLOCK)
        at_lo = valid & (x == lo)
        at_hi = valid & (x == hi)
        share_lo = _share(tl.sum(tl.where(valid, dlo, 0.0).to(tl.float64), axis=0),
                          tl.sum(at_lo.to(tl.int32), axis=0)).to(ACC)
        share_hi = _share(tl.sum(tl.where(valid, dhi, 0.0).to(tl.float64), axis=0),
                          tl.sum(at_hi.to(tl.int32), axis=0)).to(ACC)
        dx += tl.where(at_lo, share_lo, 0.0) + tl.where(at_hi, share_hi, 0.0)
        _store_grads(gt_ptr, gx_ptr, n, c, lanes, valid, W, dt, dx,
                     dts0, dts1, dts2, dts3, dxs0, dxs1, dxs2, dxs3, SEPARATE_X)
    else:
        # Pass 1: lane-wise sums of the lo/hi contributions and tie counts.
        sum_lo = tl.zeros([BLOCK], tl.float64)
        sum_hi = tl.zeros([BLOCK], tl.float64)
        cnt_lo = tl.zeros([BLOCK], tl.int32)
        cnt_hi = tl.zeros([BLOCK], tl.int32)
        for start in range(0, HW, BLOCK):
            j = start + lanes
            valid = j < HW
            x, dt, dx, dlo, dhi = _tile_grad(
                g_ptr, t_ptr, x_ptr, a_plane, n, c, j, valid, W, HW, first_counter + start // 4,
                seed, lo, hi, denom, eps, inv_tau, gtv, gs0, gs1, gs2, gs3, ts0, ts1, ts2, ts3,
                xs0, xs1, xs2, xs3, ACC, MODE, RESIDUAL, SEPARATE_X, TV, BLOCK)
            sum_lo += tl.where(valid, dlo, 0.0).to(tl.float64)
            sum_hi += tl.where(valid, dhi, 0.0).to(tl.float64)
            cnt_lo += (valid & (x == lo)).to(tl.int32)
            cnt_hi += (valid & (x == hi)).to(tl.int32)
        share_lo = _share(tl.sum(sum_lo, axis=0), tl.sum(cnt_lo, axis=0)).to(ACC)
        share_hi = _share(tl.sum(sum_hi, axis=0), tl.sum(cnt_hi, axis=0)).to(ACC)
        # Pass 2: recompute each element's derivatives and write them once (one rounding).
        for start in range(0, HW, BLOCK):
            j = start + lanes
            valid = j < HW
            x, dt, dx, dlo, dhi = _tile_grad(
                g_ptr, t_ptr, x_ptr, a_plane, n, c, j, valid, W, HW, first_counter + start // 4,
                seed, lo, hi, denom, eps, inv_tau, gtv, gs0, gs1, gs2, gs3, ts0, ts1, ts2, ts3,
                xs0, xs1, xs2, xs3, ACC, MODE, RESIDUAL, SEPARATE_X, TV, BLOCK)
            dx += tl.where(valid & (x == lo), share_lo, 0.0) \
                + tl.where(valid & (x == hi), share_hi, 0.0)
            _store_grads(gt_ptr, gx_ptr, n, c, j, valid, W, dt, dx,
                         dts0, dts1, dts2, dts3, dxs0, dxs1, dxs2, dxs3, SEPARATE_X)


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------

def _float32_parts(value: float) -> tuple[float, float, float]:
    """Three float32 numbers whose exact sum is the float64 `value` (see _scalar)."""
    parts = []
    rest = float(value)
    for _ in range(3):
        part = float(np.float32(rest))
        parts.append(part)
        rest -= part  # exact: the remainder of a rounding to fewer bits
    return tuple(parts)


def _check(t, x, tau, mode):
    for name, v in (("t", t), ("x", x)):
        if v is None:
            continue
        if v.dim() != 4:
            raise ValueError(f"sharpattn: {name} must be 4-D (N, C, H, W), got {v.dim()}-D")
        if v.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"sharpattn: {name} must be a floating tensor, got {v.dtype}")
    if x is not None and (x.shape != t.shape or x.dtype != t.dtype or x.device != t.device):
        raise ValueError("sharpattn: x must have the shape, dtype and device of t")
    if not (tau > 0 and np.isfinite(tau)):
        raise ValueError(f"sharpattn: tau must be finite and > 0, got {tau}")
    if mode not in MODES:
        raise ValueError(f"sharpattn: mode must be one of {tuple(MODES)}, got {mode!r}")


def _launch_config(HW: int, dtype: torch.dtype) -> tuple[bool, int, int]:
    """(single block?, block size, warps) for a plane of HW positions of a `dtype` map.

    At most ELEMENTS_PER_THREAD positions per thread (half for float64) and MAX_WARPS warps;
    a larger plane is walked in tiles of the largest block.
    """
    per_thread = ELEMENTS_PER_THREAD // 2 if dtype == torch.float64 else ELEMENTS_PER_THREAD
    cap = MAX_WARPS * 32 * per_thread
    block = min(cap, max(16, triton.next_power_of_2(HW)))
    return HW <= cap, block, max(1, block // (32 * per_thread))


@launcher
def forward(t, x, tau, seed, offset, mode, residual, eps, return_mask, return_tv):
    """(out, mask, stats, tv) of the sharp attention op; contract: sharpattn.ops.sharp_attention.

    tv is the (N, C) per-plane TV of A = M T in the compute dtype with return_tv, else empty.
    """
    _check(t, x, tau, mode)
    N, C, H, W = t.shape
    acc_tl, acc_torch = accumulation_dtype(t.dtype)
    with_tv = bool(return_tv)
    out = torch.empty_like(t)
    mask = torch.empty_like(t) if return_mask else t.new_empty(0)
    stats = t.new_empty((N, C, 2), dtype=acc_torch)
    tv = t.new_empty((N, C) if with_tv else (0,), dtype=acc_torch)
    result = (out, mask, stats, tv)
    HW = H * W
    if N * C == 0 or HW == 0:
        stats.zero_()
        tv.zero_()
        return result
    xx = t if x is None else x
    single, block, warps = _launch_config(HW, t.dtype)
    mask_arg = mask if return_mask else out  # never written when WRITE_MASK is off
    scratch = t.new_empty((N * C * HW if with_tv else 1,), dtype=acc_torch)
    _forward_kernel[(N * C,)](
        t, xx, out, mask_arg, stats, tv if with_tv else stats, scratch,
        C, W, HW, (HW + 3) // 4, seed, offset,
        *_float32_parts(eps), *_float32_parts(1.0 / tau),
        *t.stride(), *xx.stride(), *out.stride(), *mask_arg.stride(),
        ACC=acc_tl, MODE=MODES[mode], RESIDUAL=bool(residual), SEPARATE_X=x is not None,
        WRITE_MASK=bool(return_mask), TV=with_tv, SINGLE=single, BLOCK=block, num_warps=warps,
    )
    return result


@launcher
def backward(grad_out, grad_tv, t, x, stats, tau, seed, offset, mode, residual, eps):
    """(grad_t, grad_x) of the sharp attention op; grad_x is empty when x is None.

    grad_tv is the (N, C) gradient of the per-plane TV, or None without TV.
    """
    _check(t, x, tau, mode)
    N, C, H, W = t.shape
    acc_tl, acc_torch = accumulation_dtype(t.dtype)
    if grad_out.shape != t.shape or grad_out.dtype != t.dtype or grad_out.device != t.device:
        raise ValueError("sharpattn: grad_out must have the shape, dtype and device of t")
    if stats.shape != (N, C, 2) or stats.dtype != acc_torch or not stats.is_contiguous():
        raise ValueError(f"sharpattn: stats must be a contiguous (N, C, 2) {acc_torch} tensor")
    with_tv = grad_tv is not None
    if with_tv and (grad_tv.shape != (N, C) or grad_tv.dtype != acc_torch
                    or not grad_tv.is_contiguous() or grad_tv.device != t.device):
        raise ValueError(f"sharpattn: grad_tv must be a contiguous (N, C) {acc_torch} tensor "
                         "on the device of t")
    grad_t = torch.empty_like(t)
    grad_x = torch.empty_like(x) if x is not None else t.new_empty(0)
    HW = H * W
    if N * C == 0 or HW == 0:
        return grad_t, grad_x
    xx = t if x is None else x
    gx = grad_x if x is not None else grad_t  # never written when x is None
    single, block, warps = _launch_config(HW, t.dtype)
    scratch = t.new_empty((N * C * HW if with_tv else 1,), dtype=acc_torch)
    _backward_kernel[(N * C,)](
        grad_out, t, xx, stats, grad_tv if with_tv else stats, scratch, grad_t, gx,
        C, W, HW, (HW + 3) // 4, seed, offset,
        *_float32_parts(eps), *_float32_parts(1.0 / tau),
        *grad_out.stride(), *t.stride(), *xx.stride(), *grad_t.stride(), *gx.stride(),
        ACC=acc_tl, MODE=MODES[mode], RESIDUAL=bool(residual), SEPARATE_X=x is not None,
        TV=with_tv, SINGLE=single, BLOCK=block, num_warps=warps,
    )
    return grad_t, grad_x
