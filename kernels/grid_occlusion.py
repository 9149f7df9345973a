"""Triton kernels of AAA-Net's grid occlusion (docs/spec.md section 4), same semantics as the
C++ ones.

Layout:
  * grid_occlusion: one lane per input element (n, c, h, w) in NCHW order: x is read once and
    each of the G copies is written with consecutive lanes at consecutive addresses of the
    contiguous (N, G, C, H, W) output. The backward mirrors it: one lane per dx element sums
    the G - 1 copies that keep it.
  * grid_occlusion_pool: one program per plane (n, c). Each tile of positions is reduced into
    the G per-cell sums at once (a (cells x positions) one-hot sum, float64), so x is read once
    for grids of up to MAX_CELLS cells (finer grids re-read x once per MAX_CELLS cells); then
    P[n, k, c] = (total - cell_k) / (H*W).
  * grid_occlusion_pool_backward: one program per plane: the total of grad[n, :, c], then each
    position gets (total - grad[n, cell, c]) / (H*W).

Every tensor is read through its own strides (channels_last and sliced views need no copy) with
64-bit offsets; loop strides are added to pointers so no int32 product can overflow. Results are
rounded like the C++ kernels: from float64 through the accumulation dtype to the output dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import accumulation_dtype, launcher

FLAT_BLOCK = 1024  # elements per program of the materialised op and its backward
# Pool tiles: at most 8 float64 cell x position values per thread (POOL_WARPS warps). 8192 per
# tile with 4 warps (64 per thread) spilled up to 0.85 KB per thread on a 1x1 grid.
MAX_CELLS = 128  # cells reduced per pass of the pool kernel
TILE_ELEMENTS = 2048  # cells x positions per pool tile (MAX_CELLS * 16 at most)
POOL_WARPS = 8


@triton.jit
def _part_of(v, size, parts):
    """The grid part holding position v: floor(((v+1)*parts - 1) / size) (csrc/common/grid.h)."""
    return ((v + 1) * parts - 1) // size


@triton.jit
def _nchw(i, CHW, HW, W):
    """(n, r, c, h, w) of flat NCHW index i (int64); r is the index inside sample n."""
    n = i // CHW
    r = i - n * CHW
    c = r // HW
    j = r - c * HW
    h = j // W
    return n, r, c, h, j - h * W


@triton.jit
def _occlusion_kernel(x_ptr, out_ptr, total, CHW, HW, H, W, gh, gw, G,
                      xs0, xs1, xs2, xs3, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = i < total
    n, r, c, h, w = _nchw(i, CHW, HW, W)
    v = tl.load(x_ptr + n * xs0 + c * xs1 + h * xs2 + w * xs3, mask=valid)
    cell = _part_of(h, H, gh) * gw + _part_of(w, W, gw)
    zero = tl.zeros_like(v)
    dst = out_ptr + n * G * CHW + r
    for k in range(G):
        tl.store(dst, tl.where(cell == k, zero, v), mask=valid)
        dst += CHW


@triton.jit
def _occlusion_backward_kernel(g_ptr, dx_ptr, total, CHW, HW, H, W, gh, gw, G,
                               gs0, gs1, gs2, gs3, gs4, ACC: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = i < total
    n, r, c, h, w = _nchw(i, CHW, HW, W)
    cell = _part_of(h, H, gh) * gw + _part_of(w, W, gw)
    src = g_ptr + n * gs0 + c * gs2 + h * gs3 + w * gs4
    acc = tl.zeros([BLOCK], ACC)
    for k in range(G):
        acc += tl.load(src, mask=valid & (cell != k), other=0.0).to(ACC)
        src += gs1
    tl.store(dx_ptr + i, acc.to(dx_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _pool_kernel(x_ptr, out_ptr, C, HW, H, W, gh, gw, G, xs0, xs1, xs2, xs3,
                 ACC: tl.constexpr, CELLS: tl.constexpr, BLOCK: tl.constexpr):
    q = tl.program_id(0).to(tl.int64)
    n = q // C
    c = q - n * C
    plane = x_ptr + n * xs0 + c * xs1
    lanes = tl.arange(0, BLOCK).to(tl.int64)
    for k0 in range(0, G, CELLS):
        ks = k0 + tl.arange(0, CELLS)
        cells = tl.zeros([CELLS], tl.float64)
        lane_total = tl.zeros([BLOCK], tl.float64)
        for start in range(0, HW, BLOCK):
            j = start + lanes
            valid = j < HW
            h = j // W
            w = j - h * W
            v = tl.load(plane + h * xs2 + w * xs3, mask=valid, other=0.0).to(tl.float64)
            cell = _part_of(h, H, gh) * gw + _part_of(w, W, gw)
            hit = (cell[None, :] == ks[:, None]) & valid[None, :]
            cells += tl.sum(tl.where(hit, v[None, :], 0.0), axis=1)
            lane_total += v
        total = tl.sum(lane_total, axis=0)
        mean = (total - cells) / HW
        tl.store(out_ptr + (n * G + ks) * C + c,
                 mean.to(ACC).to(out_ptr.dtype.element_ty), mask=ks < G)


@triton.jit
def _pool_backward_kernel(g_ptr, dx_ptr, C, HW, H, W, gh, gw, G, gs0, gs1, gs2,
                          ds0, ds1, ds2, ds3,
                          ACC: tl.constexpr, CELLS: tl.constexpr, BLOCK: tl.constexpr):
    q = tl.program_id(0).to(tl.int64)
    n = q // C
    c = q - n * C
    g_plane = g_ptr + n * gs0 + c * gs2
    ks = tl.arange(0, CELLS).to(tl.int64)
    lane_total = tl.zeros([CELLS], tl.float64)
    for k0 in range(0, G, CELLS):
        k = k0 + ks
        lane_total += tl.load(g_plane + k * gs1, mask=k < G, other=0.0).to(tl.float64)
    total = tl.sum(lane_total, axis=0)
    dx_plane = dx_ptr + n * ds0 + c * ds1
    lanes = tl.arange(0, BLOCK).to(tl.int64)
    for start in range(0, HW, BLOCK):
        j = start + lanes
        valid = j < HW
        h = j // W
        w = j - h * W
        cell = _part_of(h, H, gh) * gw + _part_of(w, W, gw)
        g = tl.load(g_plane + cell * gs1, mask=valid, other=0.0).to(tl.float64)
        value = ((total - g) / HW).to(ACC).to(dx_ptr.dtype.element_ty)
        tl.store(dx_plane + h * ds2 + w * ds3, value, mask=valid)


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_grid(gh: int, gw: int, H: int, W: int) -> None:
    if gh < 1 or gw < 1:
        raise ValueError(f"sharpattn: grid ({gh}, {gw}) must be >= 1 on both sides")
    if gh > H or gw > W:
        raise ValueError(f"sharpattn: grid ({gh}, {gw}) is larger than the feature map "
                         f"(H, W) = ({H}, {W})")


def _check_map(x, gh, gw, name="x", dim=4):
    if x.dim() != dim:
        raise ValueError(f"sharpattn: {name} must be {dim}-D, got {x.dim()}-D")
    if x.dtype not in _FLOATS:
        raise TypeError(f"sharpattn: {name} must be a floating tensor, got {x.dtype}")
    _check_grid(gh, gw, x.shape[-2], x.shape[-1])


def _pool_config(G: int, HW: int) -> tuple[int, int]:
    """(cells per pass, positions per tile) of the pool kernels."""
    cells = min(triton.next_power_of_2(G), MAX_CELLS)
    block = max(16, min(triton.next_power_of_2(HW), TILE_ELEMENTS // cells))
    return cells, block


@launcher
def grid_occlusion(x: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """(N, G, C, H, W), contiguous: copy k of x with grid cell k set to zero."""
    _check_map(x, gh, gw)
    N, C, H, W = x.shape
    G = gh * gw
    out = x.new_empty((N, G, C, H, W))
    total = N * C * H * W
    if total:
        _occlusion_kernel[(triton.cdiv(total, FLAT_BLOCK),)](
            x, out, total, C * H * W, H * W, H, W, gh, gw, G, *x.stride(), BLOCK=FLAT_BLOCK)
    return out


@launcher
def grid_occlusion_backward(grad: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """(N, C, H, W), contiguous: sum_k grad[:, k] * keep_k."""
    _check_map(grad, gh, gw, "grad", dim=5)
    N, G, C, H, W = grad.shape
    if G != gh * gw:
        raise ValueError(f"sharpattn: grad must have G = gh*gw = {gh * gw} copies in dim 1, "
                         f"got {G}")
    dx = grad.new_empty((N, C, H, W))
    total = N * C * H * W
    if total:
        _occlusion_backward_kernel[(triton.cdiv(total, FLAT_BLOCK),)](
            grad, dx, total, C * H * W, H * W, H, W, gh, gw, G, *grad.stride(),
            ACC=accumulation_dtype(grad.dtype)[0], BLOCK=FLAT_BLOCK)
    return dx


@launcher
def grid_occlusion_pool(x: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """(N, G, C) in x's dtype: the spatial mean of every occluded copy, from per-cell sums."""
    _check_map(x, gh, gw)
    N, C, H, W = x.shape
    G = gh * gw
    out = x.new_empty((N, G, C))
    if N * C:
        cells, block = _pool_config(G, H * W)
        _pool_kernel[(N * C,)](x, out, C, H * W, H, W, gh, gw, G, *x.stride(),
                               ACC=accumulation_dtype(x.dtype)[0], CELLS=cells, BLOCK=block,
                               num_warps=POOL_WARPS)
    return out


@launcher
def grid_occlusion_pool_backward(grad: torch.Tensor, x: torch.Tensor, gh: int,
                                 gw: int) -> torch.Tensor:
    """dx like x (torch.empty_like): (sum_k grad[n, k, c] - grad[n, cell, c]) / (H*W)."""
    _check_map(x, gh, gw)
    N, C, H, W = x.shape
    G = gh * gw
    if grad.shape != (N, G, C):
        raise ValueError(f"sharpattn: grad must have shape (N, G, C) = {(N, G, C)}, got "
                         f"{tuple(grad.shape)}")
    if grad.dtype != x.dtype or grad.device != x.device:
        raise ValueError("sharpattn: grad must have the dtype and device of x")
    dx = torch.empty_like(x)
    if N * C:
        cells, block = _pool_config(G, H * W)
        _pool_backward_kernel[(N * C,)](grad, dx, C, H * W, H, W, gh, gw, G,
                                        *grad.stride(), *dx.stride(),
                                        ACC=accumulation_dtype(x.dtype)[0], CELLS=cells,
                                        BLOCK=block, num_warps=POOL_WARPS)
    return dx
