"""The operators users call. Each checks its arguments once, picks a backend once and calls one
registered op (sharpattn._ops), whose autograd calls one registered backward op."""

from __future__ import annotations

import torch

from . import _checks, _ops, backends, reference
from ._grid_ops import grid_occlusion, grid_occlusion_pool

__all__ = ["sharp_attention", "tv_loss", "grid_occlusion", "grid_occlusion_pool",
           "philox_uniform"]


def sharp_attention(t: torch.Tensor, x: torch.Tensor | None = None, *, tau: float, seed: int,
                    offset: int = 0, mode: str = "sample", residual: bool = True,
                    eps: float = 1e-6, return_mask: bool = False, return_tv: bool = False,
                    backend: str | None = None):
    """Sharp attention of SAN (SPEC section 2): F = (1 + M) * T, or M * T with residual=False.

    M is a mask drawn per element from the per-plane min-max normalised mask input x (t itself
    when x is None): "sample" is the two-class Gumbel-Softmax relaxation with temperature tau,
    "hard" its exact Bernoulli step with the relaxed gradient (straight-through), "mean" the
    deterministic probability p (for evaluation). The noise is Philox4x32-10 from (seed, offset)
    (SPEC section 1): the same on every backend, and recomputed in the backward, never stored.
    One call consumes N * C * ceil(H * W / 4) counters; the next call's offset may start there.

    With return_tv=True the same pass also returns the per-sample total variation (SAN eq. 6,
    shape (N,), float32; float64 for float64 input) of the attention-aware feature A = M * T;
    its gradient flows into t and x. The CPU and CUDA kernels compute it in the same pass, with
    no second read of the inputs and no A in memory; the Triton kernels stage each plane's A in
    a scratch buffer (neighbours live in other threads' registers).

    Returns F; then M if return_mask (detached: it carries no gradient); then TV if return_tv.
    """
    _checks.feature_map(t, "t")
    if x is not None:
        _checks.same_map(t, x, "x")
    tau = _checks.positive_finite(tau, "tau")
    eps = _checks.positive_finite(eps, "eps")
    seed = _checks.counter_int(seed, "seed", 1 << 64)
    offset = _checks.counter_int(offset, "offset", 1 << 63)
    if mode not in reference.MODES:
        raise ValueError(f"sharpattn: mode must be one of {reference.MODES}, got {mode!r}")
    name = backends.resolve(backend, t.device)
    if name == "reference":
        out, mask, tv = reference.sharp_attention(t, x, tau=tau, seed=seed, offset=offset,
                                                  mode=mode, residual=residual, eps=eps,
                                                  return_tv=return_tv)
        mask = mask.detach()
    else:
        out, mask, _, tv = _ops.op("sharp_attention_forward", name)(
            t, x, tau, _checks.as_int64(seed), offset, mode, bool(residual), eps,
            bool(return_mask), bool(return_tv))
        tv = tv.sum(dim=1) if return_tv else None
    extras = ((mask,) if return_mask else ()) + ((tv,) if return_tv else ())
    return (out,) + extras if extras else out


def tv_loss(a: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Total variation of SAN eq. 6 per sample: shape (N,), float32 (float64 for float64 input).

    Sums the squared differences of vertical and horizontal neighbours over each sample's
    (C, H, W); its gradient is eq. 7, 2 (D1^T D1 A_c + A_c D2 D2^T) per channel.
    """
    _checks.feature_map(a, "a")
    name = backends.resolve(backend, a.device)
    if name == "reference":
        return reference.tv_loss(a)
    return _ops.op("tv_per_plane", name)(a).sum(dim=1)


def philox_uniform(shape, *, seed: int, offset: int = 0, device=None,
                   dtype: torch.dtype = torch.float32, backend: str | None = None) -> torch.Tensor:
    """The uniforms u that SPEC section 1 assigns to each element of a map of this shape.

    The last two dims form a plane (a 1-D shape is one plane). u = ((r >> 8) + 0.5) * 2^-24 is
    exact in float64; float32 rounds it to nearest (so the very top value rounds up to 1.0).
    Every backend returns the same bits.
    """
    seed = _checks.counter_int(seed, "seed", 1 << 64)
    offset = _checks.counter_int(offset, "offset", 1 << 63)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"sharpattn: philox_uniform gives float32 or float64, got {dtype}")
    shape = torch.Size(shape)
    device = torch.device(device if device is not None else "cpu")
    name = backends.resolve(backend, device)
    if name == "reference":
        return reference.philox_uniform(shape, seed=seed, offset=offset, device=device,
                                        dtype=dtype)
    planes, plane_size = reference.plane_layout(shape)
    out = torch.empty((planes, plane_size), device=device, dtype=dtype)
    if out.numel():
        _ops.philox_uniform_out(name, out, _checks.as_int64(seed), offset)
    return out.reshape(shape)
