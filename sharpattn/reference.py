"""Eager PyTorch implementation of docs/spec.md: the executable specification.

Every backend is tested against these functions. They favour clarity over speed: the noise is
computed with plain integer tensor arithmetic, the mask with ordinary autograd-visible ops, so
that the gradients are exactly "the formula written with torch.amin/torch.amax" (docs/spec.md
section 2).
"""

from __future__ import annotations

import math

import torch

MODES = ("sample", "mean", "hard")

_MASK32 = 0xFFFFFFFF
_PHILOX_MUL = (0xD2511F53, 0xCD9E8D57)
_PHILOX_BUMP = (0x9E3779B9, 0xBB67AE85)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype all arithmetic runs in: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _mul_hi_lo(constant: int, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of constant * value for uint32 operands held in int64 tensors.

    The full product needs 64 unsigned bits, more than int64 holds, so the constant is split in
    16-bit halves and the partial products (each below 2^48) are recombined.
    """
    low_half, high_half = constant & 0xFFFF, constant >> 16
    p0 = value * low_half
    p1 = value * high_half
    s = p0 + ((p1 & 0xFFFF) << 16)
    return (p1 >> 16) + (s >> 32), s & _MASK32


def philox4x32_10(counter: torch.Tensor, key: int) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of 64-bit counters (int64 tensor, two's complement) under a 64-bit key.

    Counter block = (c mod 2^32, c >> 32, 0, 0), key = (key mod 2^32, key >> 32); returns the four
    output words as int64 tensors holding uint32 values.
    """
    c0 = counter & _MASK32
    c1 = (counter >> 32) & _MASK32
    c2 = torch.zeros_like(counter)
    c3 = torch.zeros_like(counter)
    k0, k1 = key & _MASK32, (key >> 32) & _MASK32
    for _ in range(10):
        hi0, lo0 = _mul_hi_lo(_PHILOX_MUL[0], c0)
        hi1, lo1 = _mul_hi_lo(_PHILOX_MUL[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _PHILOX_BUMP[0]) & _MASK32
        k1 = (k1 + _PHILOX_BUMP[1]) & _MASK32
    return c0, c1, c2, c3


def plane_layout(shape) -> tuple[int, int]:
    """(planes, positions per plane) of a shape: the last two dims form a plane (docs/spec.md
    section 1).

    A 1-D shape is a single plane; a 0-D shape a single position.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) >= 2:
        return math.prod(shape[:-2]), shape[-2] * shape[-1]
    return 1, math.prod(shape)


def philox_words(shape, *, seed: int, offset: int = 0, device=None) -> torch.Tensor:
    """The uint32 Philox word of every element (int64 tensor), indexed as in docs/spec.md
    section 1."""
    planes, plane_size = plane_layout(shape)
    groups = (plane_size + 3) // 4
    plane = torch.arange(planes, device=device, dtype=torch.int64).unsqueeze(1)
    group = torch.arange(groups, device=device, dtype=torch.int64).unsqueeze(0)
    # offset + p*G + g in two's complement: wraps exactly like the uint64 counter.
    signed_offset = offset - (1 << 64) if offset >= (1 << 63) else offset
    counter = signed_offset + plane * groups + group
    # Position j of a plane is word j % 4 of group j // 4: the four words of each group, side
    # by side, are the plane's positions in order.
    words = torch.stack(philox4x32_10(counter, seed), dim=-1).reshape(planes, 4 * groups)
    return words[:, :plane_size].reshape(shape)


def _odd_numerators(words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # u = (2k + 1) 2^-25 and 1 - u = (2^25 - 1 - 2k) 2^-25 with k = r >> 8. int32 holds both.
    k = words >> 8
    return (2 * k + 1).to(torch.int32), ((1 << 25) - 1 - 2 * k).to(torch.int32)


def philox_uniform(shape, *, seed: int, offset: int = 0, device=None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """u = ((r >> 8) + 0.5) 2^-24 per element: exact in float64, rounded to nearest in float32."""
    odd, _ = _odd_numerators(philox_words(shape, seed=seed, offset=offset, device=device))
    return odd.to(dtype) * 2.0**-25


def logistic_noise(shape, *, seed: int, offset: int = 0, device=None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """L = log(u) - log(1 - u), with u and 1 - u each rounded from its own exact numerator."""
    odd, odd_complement = _odd_numerators(
        philox_words(shape, seed=seed, offset=offset, device=device))
    return torch.log(odd.to(dtype) * 2.0**-25) - torch.log(odd_complement.to(dtype) * 2.0**-25)


def mask_logit(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """log p - log(1 - p) of eq. 3, computed as log(X - lo + eps) - log(hi - X + eps)."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return torch.log(x - lo + eps) - torch.log(hi - x + eps)


def sharp_mask(x: torch.Tensor, *, tau: float, seed: int, offset: int = 0, mode: str = "sample",
               eps: float = 1e-6) -> torch.Tensor:
    """The mask M of docs/spec.md section 2, in x's dtype (which must already be the
    accumulation dtype)."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    if mode == "mean":
        return (x - lo + eps) / (hi - lo + 2 * eps)
    z = torch.log(x - lo + eps) - torch.log(hi - x + eps)
    z = z + logistic_noise(x.shape, seed=seed, offset=offset, device=x.device, dtype=x.dtype)
    soft = torch.sigmoid(z / tau)
    if mode == "sample":
        return soft
    if mode == "hard":
        # Straight-through: the value is the exact Bernoulli(p) step, the gradient the relaxed
        # sample's. soft - soft.detach() is exactly zero, so the value is exactly 0 or 1.
        return (z > 0).to(x.dtype) + (soft - soft.detach())
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def sharp_attention(t: torch.Tensor, x: torch.Tensor | None = None, *, tau: float, seed: int,
                    offset: int = 0, mode: str = "sample", residual: bool = True,
                    eps: float = 1e-6, return_tv: bool = False):
    """(F, M, TV): F = (1 + M) T (residual, eq. 2) or M T (eq. 1) and M, both in t's dtype, and
    with return_tv the per-sample total variation of A = M T (eq. 6), else None.

    M comes from x (or from t itself when x is None, in which case both gradient paths reach t).
    """
    acc = accumulation_dtype(t.dtype)
    t_acc = t.to(acc)
    x_acc = t_acc if x is None else x.to(acc)
    m = sharp_mask(x_acc, tau=tau, seed=seed, offset=offset, mode=mode, eps=eps)
    f = (1 + m) * t_acc if residual else m * t_acc
    tv = tv_loss(m * t_acc) if return_tv else None
    return f.to(t.dtype), m.to(t.dtype), tv


def tv_loss(a: torch.Tensor) -> torch.Tensor:
    """Per-sample total variation of SAN eq. 6: squared vertical and horizontal neighbour
    differences summed over (C, H, W); shape (N,), float32 (float64 for float64 input)."""
    a = a.to(accumulation_dtype(a.dtype))
    vertical = (a[:, :, 1:, :] - a[:, :, :-1, :]).square().sum(dim=(1, 2, 3))
    horizontal = (a[:, :, :, 1:] - a[:, :, :, :-1]).square().sum(dim=(1, 2, 3))
    return vertical + horizontal


def grid_cells(size: int, parts: int) -> list[tuple[int, int]]:
    """[floor(i*size/parts), floor((i+1)*size/parts)) for each of the parts (docs/spec.md
    section 4)."""
    return [(i * size // parts, (i + 1) * size // parts) for i in range(parts)]


def grid_keep_masks(height: int, width: int, grid: tuple[int, int], *, device=None,
                    dtype=torch.float32) -> torch.Tensor:
    """(G, H, W): keep_k is 0 inside cell k and 1 elsewhere, cells numbered row-major."""
    gh, gw = grid
    keep = torch.ones(gh * gw, height, width, device=device, dtype=dtype)
    for a, (r0, r1) in enumerate(grid_cells(height, gh)):
        for b, (c0, c1) in enumerate(grid_cells(width, gw)):
            keep[a * gw + b, r0:r1, c0:c1] = 0
    return keep


def grid_occlusion(x: torch.Tensor, grid: tuple[int, int] = (4, 4)) -> torch.Tensor:
    """(N, G, C, H, W): copy k of each sample with grid cell k set to zero (AAA-Net Alg. 1)."""
    keep = grid_keep_masks(x.shape[2], x.shape[3], grid, device=x.device, dtype=x.dtype)
    return x.unsqueeze(1) * keep.unsqueeze(1)


def grid_occlusion_pool(x: torch.Tensor, grid: tuple[int, int] = (4, 4)) -> torch.Tensor:
    """(N, G, C): the spatial mean of every occluded copy, i.e. grid_occlusion(x).mean((-2, -1)),
    in x's dtype; computed here by materialising the copies, as the definition reads."""
    acc = grid_occlusion(x.to(accumulation_dtype(x.dtype)), grid).mean(dim=(-2, -1))
    return acc.to(x.dtype)
