"""Triton kernels of the sharp attention operator (SPEC section 2), same semantics as the C++ ones.

Layout: one program per plane p = n*C + c. A plane of at most SINGLE_BLOCK_CAP positions is held
in registers as one power-of-two block: x is read once, reduced to (lo, hi), and the mask, the
output (and in the backward the per-element derivatives and the lo/hi shares) are computed from
the same registers. A larger plane is walked in TILE-sized tiles: a min/max (or gradient-sum)
pass, then a pass that recomputes and writes.

Every tensor is read and written through its own four strides (channels_last and sliced views
need no copy), with 64-bit offsets. The noise is recomputed from (seed, offset), never stored;
the backward reads only t, x, grad_out and the per-plane (lo, hi) statistics.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .philox import logistic_from_words, philox_words

MODES = {"sample": 0, "mean": 1, "hard": 2}
SINGLE_BLOCK_CAP = 8192  # largest plane kept in registers by one program
TILE = 2048  # positions per step of the tiled path; a multiple of 4 (whole Philox blocks)


# --------------------------------------------------------------------------------------------
# Per-element math (csrc/common/sharp_mask.h)
# --------------------------------------------------------------------------------------------

@triton.jit
def _scalar(hi, mid, lo, ACC: tl.constexpr):
    """A float64 host scalar sent as three float32 parts (kernels take float32 scalars only).

    The parts hold 72 significant bits, so their float64 sum is the original value exactly;
    float32 compute uses the first part, the float32 rounding of the value.
    """
    if ACC == tl.float64:
        return (tl.to_tensor(hi).to(tl.float64) + tl.to_tensor(mid).to(tl.float64)) \
            + tl.to_tensor(lo).to(tl.float64)
    else:
        return tl.to_tensor(hi).to(tl.float32)


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
    return 1.0 / (1.0 + tl.exp(-v))


@triton.jit
def _mask_value(x, noise, lo, hi, denom, eps, inv_tau, MODE: tl.constexpr):
    """M of SPEC section 2: p (mean), sigmoid((logit + L) / tau) (sample) or 1[logit + L > 0]."""
    a = (x - lo) + eps  # distance above the minimum, never 0
    if MODE == 1:
        return a / denom
    else:
        b = (hi - x) + eps  # distance below the maximum, never 0
        z = (tl.log(a) - tl.log(b)) + noise
        if MODE == 2:
            return tl.where(z > 0, 1.0, 0.0).to(x.dtype)
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
def _element_grad(g, x, t, noise, lo, hi, denom, eps, inv_tau, MODE: tl.constexpr,
                  RESIDUAL: tl.constexpr):
    """(dT, dX with lo and hi held fixed, contribution to dL/dlo, to dL/dhi) of each element.

    Hard mode is straight-through: the value is the step, the gradient the relaxed sample's.
    """
    a = (x - lo) + eps
    b = (hi - x) + eps
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
            m = tl.where(z > 0, 1.0, 0.0).to(x.dtype)
        else:
            m = soft
        g_z = g_mask * soft * (1.0 - soft) * inv_tau
        g_a = g_z / a
        g_b = g_z / b
        dx = g_a + g_b
        dlo = -g_a
        dhi = -g_b
    if RESIDUAL:
        dt = g * (1.0 + m)
    else:
        dt = g * m
    return dt, dx, dlo, dhi


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["seed", "offset"])
def _forward_kernel(
    t_ptr, x_ptr, out_ptr, mask_ptr, stats_ptr,
    C, W, HW, G, seed, offset,
    eps_hi, eps_mid, eps_lo, itau_hi, itau_mid, itau_lo,
    ts0, ts1, ts2, ts3, xs0, xs1, xs2, xs3,
    os0, os1, os2, os3, ms0, ms1, ms2, ms3,
    ACC: tl.constexpr, MODE: tl.constexpr, RESIDUAL: tl.constexpr, SEPARATE_X: tl.constexpr,
    WRITE_MASK: tl.constexpr, SINGLE: tl.constexpr, BLOCK: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    n = p // C
    c = p % C
    eps = _scalar(eps_hi, eps_mid, eps_lo, ACC)
    inv_tau = _scalar(itau_hi, itau_mid, itau_lo, ACC)
    first_counter = offset + p * G  # counter of the plane's first four positions
    lanes = tl.arange(0, BLOCK)

    if SINGLE:
        valid = lanes < HW
        x_off = _plane_offsets(n, c, lanes, W, xs0, xs1, xs2, xs3)
        x = tl.load(x_ptr + x_off, mask=valid, other=0.0).to(ACC)
        lo = tl.min(tl.where(valid, x, float("inf")), axis=0)
        hi = tl.max(tl.where(valid, x, float("-inf")), axis=0)
        x = tl.where(valid, x, lo)  # padding lanes: keep their (unused) logs finite
        if SEPARATE_X:
            t_off = _plane_offsets(n, c, lanes, W, ts0, ts1, ts2, ts3)
            t = tl.load(t_ptr + t_off, mask=valid, other=0.0).to(ACC)
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
    else:
        # Pass 1: lane-wise running min/max, reduced once at the end.
        lo_run = tl.full([BLOCK], float("inf"), ACC)
        hi_run = tl.full([BLOCK], float("-inf"), ACC)
        for start in range(0, HW, BLOCK):
            j = start + lanes
            valid = j < HW
            x = tl.load(x_ptr + _plane_offsets(n, c, j, W, xs0, xs1, xs2, xs3), mask=valid,
                        other=0.0).to(ACC)
            lo_run = tl.minimum(lo_run, tl.where(valid, x, float("inf")))
            hi_run = tl.maximum(hi_run, tl.where(valid, x, float("-inf")))
        lo = tl.min(lo_run, axis=0)
        hi = tl.max(hi_run, axis=0)
        denom = (hi - lo) + 2 * eps
        # Pass 2: mask and output, tile by tile.
        for start in range(0, HW, BLOCK):
            j = start + lanes
            valid = j < HW
            x = tl.load(x_ptr + _plane_offsets(n, c, j, W, xs0, xs1, xs2, xs3), mask=valid,
                        other=0.0).to(ACC)
            x = tl.where(valid, x, lo)
            if SEPARATE_X:
                t = tl.load(t_ptr + _plane_offsets(n, c, j, W, ts0, ts1, ts2, ts3), mask=valid,
                            other=0.0).to(ACC)
            else:
                t = x
            noise = _noise(seed, first_counter + start // 4, ACC, BLOCK, MODE)
            m = _mask_value(x, noise, lo, hi, denom, eps, inv_tau, MODE)
            tl.store(out_ptr + _plane_offsets(n, c, j, W, os0, os1, os2, os3),
                     _gate(m, t, RESIDUAL).to(out_ptr.dtype.element_ty), mask=valid)
            if WRITE_MASK:
                tl.store(mask_ptr + _plane_offsets(n, c, j, W, ms0, ms1, ms2, ms3),
                         m.to(mask_ptr.dtype.element_ty), mask=valid)
    tl.store(stats_ptr + 2 * p, lo)
    tl.store(stats_ptr + 2 * p + 1, hi)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------

@triton.jit
def _share(total, count):
    """The min/max gradient split evenly among the tied elements (torch.amin/amax autograd)."""
    return tl.where(count > 0, total / tl.maximum(count, 1).to(total.dtype), 0.0)


@triton.jit(do_not_specialize=["seed", "offset"])
def _backward_kernel(
    g_ptr, t_ptr, x_ptr, stats_ptr, gt_ptr, gx_ptr,
    C, W, HW, G, seed, offset,
    eps_hi, eps_mid, eps_lo, itau_hi, itau_mid, itau_lo,
    gs0, gs1, gs2, gs3, ts0, ts1, ts2, ts3, xs0, xs1, xs2, xs3,
    dts0, dts1, dts2, dts3, dxs0, dxs1, dxs2, dxs3,
    ACC: tl.constexpr, MODE: tl.constexpr, RESIDUAL: tl.constexpr, SEPARATE_X: tl.constexpr,
    SINGLE: tl.constexpr, BLOCK: tl.constexpr,
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
    lanes = tl.arange(0, BLOCK)

    if SINGLE:
        valid = lanes < HW
        x = tl.load(x_ptr + _plane_offsets(n, c, lanes, W, xs0, xs1, xs2, xs3), mask=valid,
                    other=0.0).to(ACC)
        x = tl.where(valid, x, lo)  # padding lanes: keep their (unused) logs finite
        if SEPARATE_X:
            t = tl.load(t_ptr + _plane_offsets(n, c, lanes, W, ts0, ts1, ts2, ts3), mask=valid,
                        other=0.0).to(ACC)
        else:
            t = x
        g = tl.load(g_ptr + _plane_offsets(n, c, lanes, W, gs0, gs1, gs2, gs3), mask=valid,
                    other=0.0).to(ACC)
        noise = _noise(seed, first_counter, ACC, BLOCK, MODE)
        dt, dx, dlo, dhi = _element_grad(g, x, t, noise, lo, hi, denom, eps, inv_tau, MODE,
                                         RESIDUAL)
        at_lo = valid & (x == lo)
        at_hi = valid & (x == hi)
        share_lo = _share(tl.sum(tl.where(valid, dlo, 0.0), axis=0),
                          tl.sum(at_lo.to(tl.int32), axis=0))
        share_hi = _share(tl.sum(tl.where(valid, dhi, 0.0), axis=0),
                          tl.sum(at_hi.to(tl.int32), axis=0))
        dx += tl.where(at_lo, share_lo, 0.0) + tl.where(at_hi, share_hi, 0.0)
        if SEPARATE_X:
            tl.store(gx_ptr + _plane_offsets(n, c, lanes, W, dxs0, dxs1, dxs2, dxs3),
                     dx.to(gx_ptr.dtype.element_ty), mask=valid)
        else:
            dt += dx  # x is t: both gradient paths reach t
        tl.store(gt_ptr + _plane_offsets(n, c, lanes, W, dts0, dts1, dts2, dts3),
                 dt.to(gt_ptr.dtype.element_ty), mask=valid)
    else:
        # Pass 1: lane-wise sums of the lo/hi contributions and tie counts.
        sum_lo = tl.zeros([BLOCK], ACC)
        sum_hi = tl.zeros([BLOCK], ACC)
        cnt_lo = tl.zeros([BLOCK], tl.int32)
        cnt_hi = tl.zeros([BLOCK], tl.int32)
        for start in range(0, HW, BLOCK):
            j = start + lanes
            valid = j < HW
            x = tl.load(x_ptr + _plane_offsets(n, c, j, W, xs0, xs1, xs2, xs3), mask=valid,
                        other=0.0).to(ACC)
            x = tl.where(valid, x, lo)
            if SEPARATE_X:
                t = tl.load(t_ptr + _plane_offsets(n, c, j, W, ts0, ts1, ts2, ts3), mask=valid,
                            other=0.0).to(ACC)
            else:
                t = x
            g = tl.load(g_ptr + _plane_offsets(n, c, j, W, gs0, gs1, gs2, gs3), mask=valid,
                        other=0.0).to(ACC)
            noise = _noise(seed, first_counter + start // 4, ACC, BLOCK, MODE)
            dt, dx, dlo, dhi = _element_grad(g, x, t, noise, lo, hi, denom, eps, inv_tau, MODE,
                                             RESIDUAL)
            sum_lo += tl.where(valid, dlo, 0.0)
            sum_hi += tl.where(valid, dhi, 0.0)
            cnt_lo += (valid & (x == lo)).to(tl.int32)
            cnt_hi += (valid & (x == hi)).to(tl.int32)
        share_lo = _share(tl.sum(sum_lo, axis=0), tl.sum(cnt_lo, axis=0))
        share_hi = _share(tl.sum(sum_hi, axis=0), tl.sum(cnt_hi, axis=0))
        # Pass 2: recompute each element's derivatives and write them once (one rounding).
        for start in range(0, HW, BLOCK):
            j = start + lanes
            valid = j < HW
            x = tl.load(x_ptr + _plane_offsets(n, c, j, W, xs0, xs1, xs2, xs3), mask=valid,
                        other=0.0).to(ACC)
            x = tl.where(valid, x, lo)
            if SEPARATE_X:
                t = tl.load(t_ptr + _plane_offsets(n, c, j, W, ts0, ts1, ts2, ts3), mask=valid,
                            other=0.0).to(ACC)
            else:
                t = x
            g = tl.load(g_ptr + _plane_offsets(n, c, j, W, gs0, gs1, gs2, gs3), mask=valid,
                        other=0.0).to(ACC)
            noise = _noise(seed, first_counter + start // 4, ACC, BLOCK, MODE)
            dt, dx, dlo, dhi = _element_grad(g, x, t, noise, lo, hi, denom, eps, inv_tau, MODE,
                                             RESIDUAL)
            dx += tl.where(valid & (x == lo), share_lo, 0.0) \
                + tl.where(valid & (x == hi), share_hi, 0.0)
            if SEPARATE_X:
                tl.store(gx_ptr + _plane_offsets(n, c, j, W, dxs0, dxs1, dxs2, dxs3),
                         dx.to(gx_ptr.dtype.element_ty), mask=valid)
            else:
                dt += dx
            tl.store(gt_ptr + _plane_offsets(n, c, j, W, dts0, dts1, dts2, dts3),
                     dt.to(gt_ptr.dtype.element_ty), mask=valid)


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


def _launch_config(HW: int) -> tuple[bool, int, int]:
    """(single block?, block size, warps) for a plane of HW positions."""
    if HW <= SINGLE_BLOCK_CAP:
        block = max(16, triton.next_power_of_2(HW))
        return True, block, min(16, max(1, block // 512))
    return False, TILE, 8


def _acc(dtype: torch.dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def forward(t, x, tau, seed, offset, mode, residual, eps, return_mask):
    """(out, mask, stats) of the sharp attention op; see sharpattn._ops for the contract."""
    _check(t, x, tau, mode)
    N, C, H, W = t.shape
    acc_tl, acc_torch = _acc(t.dtype)
    out = torch.empty_like(t)
    mask = torch.empty_like(t) if return_mask else t.new_empty(0)
    stats = t.new_empty((N, C, 2), dtype=acc_torch)
    HW = H * W
    if N * C == 0 or HW == 0:
        return out, mask, stats.zero_()
    xx = t if x is None else x
    single, block, warps = _launch_config(HW)
    mask_arg = mask if return_mask else out  # never written when WRITE_MASK is off
    _forward_kernel[(N * C,)](
        t, xx, out, mask_arg, stats,
        C, W, HW, (HW + 3) // 4, seed, offset,
        *_float32_parts(eps), *_float32_parts(1.0 / tau),
        *t.stride(), *xx.stride(), *out.stride(), *mask_arg.stride(),
        ACC=acc_tl, MODE=MODES[mode], RESIDUAL=bool(residual), SEPARATE_X=x is not None,
        WRITE_MASK=bool(return_mask), SINGLE=single, BLOCK=block, num_warps=warps,
    )
    return out, mask, stats


def backward(grad_out, t, x, stats, tau, seed, offset, mode, residual, eps):
    """(grad_t, grad_x) of the sharp attention op; grad_x is empty when x is None."""
    _check(t, x, tau, mode)
    N, C, H, W = t.shape
    acc_tl, acc_torch = _acc(t.dtype)
    if grad_out.shape != t.shape or grad_out.dtype != t.dtype or grad_out.device != t.device:
        raise ValueError("sharpattn: grad_out must have the shape, dtype and device of t")
    if stats.shape != (N, C, 2) or stats.dtype != acc_torch or not stats.is_contiguous():
        raise ValueError(f"sharpattn: stats must be a contiguous (N, C, 2) {acc_torch} tensor")
    grad_t = torch.empty_like(t)
    grad_x = torch.empty_like(x) if x is not None else t.new_empty(0)
    HW = H * W
    if N * C == 0 or HW == 0:
        return grad_t, grad_x
    xx = t if x is None else x
    gx = grad_x if x is not None else grad_t  # never written when x is None
    single, block, warps = _launch_config(HW)
    _backward_kernel[(N * C,)](
        grad_out, t, xx, stats, grad_t, gx,
        C, W, HW, (HW + 3) // 4, seed, offset,
        *_float32_parts(eps), *_float32_parts(1.0 / tau),
        *grad_out.stride(), *t.stride(), *xx.stride(), *grad_t.stride(), *gx.stride(),
        ACC=acc_tl, MODE=MODES[mode], RESIDUAL=bool(residual), SEPARATE_X=x is not None,
        SINGLE=single, BLOCK=block, num_warps=warps,
    )
    return grad_t, grad_x
