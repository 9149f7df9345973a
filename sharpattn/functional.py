"""The operators users call. Each checks its arguments once, picks a backend once and calls one
registered op (sharpattn._ops), whose autograd calls one registered backward op."""

from __future__ import annotations

import torch

from . import _checks, _ops, backends, reference

__all__ = ["sharp_attention", "philox_uniform"]


def sharp_attention(t: torch.Tensor, x: torch.Tensor | None = None, *, tau: float, seed: int,
                    offset: int = 0, mode: str = "sample", residual: bool = True,
                    eps: float = 1e-6, return_mask: bool = False, backend: str | None = None):
    """Sharp attention of SAN (SPEC section 2): F = (1 + M) * T, or M * T with residual=False.

    M is a mask drawn per element from the per-plane min-max normalised mask input x (t itself
    when x is None): "sample" is the two-class Gumbel-Softmax relaxation with temperature tau,
    "hard" its exact Bernoulli step with the relaxed gradient (straight-through), "mean" the
    deterministic probability p (for evaluation). The noise is Philox4x32-10 from (seed, offset)
    (SPEC section 1): the same on every backend, and recomputed in the backward, never stored.
    One call consumes N * C * ceil(H * W / 4) counters; the next call's offset may start there.

    Returns F, or (F, M) with return_mask=True (M is detached: it carries no gradient).
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
        out, mask = reference.sharp_attention(t, x, tau=tau, seed=seed, offset=offset, mode=mode,
                                              residual=residual, eps=eps)
        return (out, mask.detach()) if return_mask else out
    out, mask, _ = _ops.forward_op(name)(t, x, tau, _checks.as_int64(seed), offset, mode,
                                         bool(residual), eps, bool(return_mask))
    return (out, mask) if return_mask else out


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
