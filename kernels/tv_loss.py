"""Triton kernels of the total variation penalty (docs/spec.md section 3, SAN eq. 6-7), per plane.

One program per (n, c) plane walks it in tiles; each position reads its right and lower
neighbours (forward) or all four (backward) through the tensor's own strides, so any layout is
read in place. The neighbour reads hit the cache lines the tile itself just loaded.
Positions are counted in 64 bits (HW below): a plane of 2^31 positions or more must not wrap.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import accumulation_dtype, launcher

TILE = 1024


@triton.jit
def _at(ptr, n, c, h, w, s0, s1, s2, s3, valid, ACC: tl.constexpr):
    """a[n, c, h, w] in the compute dtype where valid, 0 elsewhere (64-bit offsets)."""
    offset = n * s0 + c * s1 + h.to(tl.int64) * s2 + w.to(tl.int64) * s3
    return tl.load(ptr + offset, mask=valid, other=0.0).to(ACC)


@triton.jit
def _tv_forward_kernel(a_ptr, tv_ptr, C, H, W, s0, s1, s2, s3,
                       ACC: tl.constexpr, BLOCK: tl.constexpr):
    p = tl.program_id(0).to(tl.int64)
    n = p // C
    c = p % C
    HW = tl.cast(H, tl.int64) * W  # H * W in int32 would wrap at 2^31 positions
    lanes = tl.arange(0, BLOCK)
    total = tl.zeros([BLOCK], ACC)
    for start in range(0, HW, BLOCK):
        j = start + lanes
        inside = j < HW
        h = j // W
        w = j % W
        v = _at(a_ptr, n, c, h, w, s0, s1, s2, s3, inside, ACC)
        has_below = inside & (h + 1 < H)
        has_right = inside & (w + 1 < W)
        below = _at(a_ptr, n, c, h + 1, w, s0, s1, s2, s3, has_below, ACC)
        right = _at(a_ptr, n, c, h, w + 1, s0, s1, s2, s3, has_right, ACC)
        total += tl.where(has_below, (below - v) * (below - v), 0.0)
        total += tl.where(has_right, (right - v) * (right - v), 0.0)
    tl.store(tv_ptr + p, tl.sum(total, axis=0))


@triton.jit
def _tv_backward_kernel(grad_ptr, a_ptr, out_ptr, C, H, W, s0, s1, s2, s3, o0, o1, o2, o3,
                        ACC: tl.constexpr, BLOCK: tl.constexpr):
    p = tl.program_id(0).to(tl.int64)
    n = p // C
    c = p % C
    g = tl.load(grad_ptr + p).to(ACC)
    HW = tl.cast(H, tl.int64) * W  # H * W in int32 would wrap at 2^31 positions
    lanes = tl.arange(0, BLOCK)
    for start in range(0, HW, BLOCK):
        j = start + lanes
        inside = j < HW
        h = j // W
        w = j % W
        v = _at(a_ptr, n, c, h, w, s0, s1, s2, s3, inside, ACC)
        # 2 (D1^T D1 A + A D2 D2^T): twice the sum of (A - neighbour) over existing neighbours.
        s = tl.zeros([BLOCK], ACC)
        up = inside & (h > 0)
        down = inside & (h + 1 < H)
        left = inside & (w > 0)
        right = inside & (w + 1 < W)
        s += tl.where(up, v - _at(a_ptr, n, c, h - 1, w, s0, s1, s2, s3, up, ACC), 0.0)
        s += tl.where(down, v - _at(a_ptr, n, c, h + 1, w, s0, s1, s2, s3, down, ACC), 0.0)
        s += tl.where(left, v - _at(a_ptr, n, c, h, w - 1, s0, s1, s2, s3, left, ACC), 0.0)
        s += tl.where(right, v - _at(a_ptr, n, c, h, w + 1, s0, s1, s2, s3, right, ACC), 0.0)
        offset = n * o0 + c * o1 + h.to(tl.int64) * o2 + w.to(tl.int64) * o3
        tl.store(out_ptr + offset, (2.0 * g * s).to(out_ptr.dtype.element_ty), mask=inside)


def _block(hw: int) -> int:
    return min(TILE, max(16, triton.next_power_of_2(hw)))


@launcher
def tv_per_plane(a: torch.Tensor) -> torch.Tensor:
    """(N, C) total variation of each plane, in float32 (float64 for float64 input)."""
    N, C, H, W = a.shape
    acc_tl, acc_torch = accumulation_dtype(a.dtype)
    tv = a.new_empty((N, C), dtype=acc_torch)
    if tv.numel() == 0 or H * W == 0:
        return tv.zero_()
    _tv_forward_kernel[(N * C,)](a, tv, C, H, W, *a.stride(), ACC=acc_tl, BLOCK=_block(H * W))
    return tv


@launcher
def tv_per_plane_backward(grad: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """dL/da given the (N, C) gradient of the per-plane TV (eq. 7, scaled per plane)."""
    N, C, H, W = a.shape
    acc_tl, acc_torch = accumulation_dtype(a.dtype)
    if grad.shape != (N, C) or grad.dtype != acc_torch or not grad.is_contiguous():
        raise ValueError(f"sharpattn: grad must be a contiguous (N, C) {acc_torch} tensor")
    out = torch.empty_like(a)
    if out.numel() == 0:
        return out
    _tv_backward_kernel[(N * C,)](grad, a, out, C, H, W, *a.stride(), *out.stride(),
                                  ACC=acc_tl, BLOCK=_block(H * W))
    return out
