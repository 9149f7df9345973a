"""Sharp attention (docs/spec.md section 2, with the fused TV of 2b): fake kernels, autograd,
backends, public functions.

Registered ops (forward returns (out, mask, stats, tv); backward returns (grad_t, grad_x)):

  sharpattn::sharp_attention_{forward,backward}          cpu, cuda (sharpattn._C)
  sharpattn::triton_sharp_attention_{forward,backward}   triton (sharpattn.kernels)
  sharpattn::sharp_attention_tensor_args_{forward,backward}
      the same op with tau and (seed, offset) as CPU tensors, for modules under torch.compile:
      a new tau (annealed every epoch, eq. 9) is then an in-place update, not a recompile, and
      a seed drawn per step stays inside the graph. Their implementations read the numbers
      (no device synchronisation: the tensors live on the CPU) and call the backend's op, so
      the numerics are exactly those of `sharp_attention` with the same (tau, seed, offset).

The backward is itself a registered op that recomputes the noise from (seed, offset) and reads
only t, x and the per-plane (min, max) statistics saved by the forward. Double backward raises.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _checks, backends, reference
from . import _registry

SEED_LIMIT = 1 << 62  # seeds and offsets drawn in [0, 2^62): valid for every op, never negative


# --------------------------------------------------------------------------------------------
# Fake kernels
# --------------------------------------------------------------------------------------------

def _fake_forward(t, x, tau, seed, offset, mode, residual, eps, return_mask, return_tv):
    acc = reference.accumulation_dtype(t.dtype)
    out = torch.empty_like(t)
    mask = torch.empty_like(t) if return_mask else t.new_empty(0)
    stats = t.new_empty((t.shape[0], t.shape[1], 2), dtype=acc)
    tv = t.new_empty((t.shape[0], t.shape[1]) if return_tv else (0,), dtype=acc)
    return out, mask, stats, tv


def _fake_backward(grad_out, grad_tv, t, x, stats, tau, seed, offset, mode, residual, eps):
    return torch.empty_like(t), (torch.empty_like(x) if x is not None else t.new_empty(0))


# --------------------------------------------------------------------------------------------
# Triton backend
# --------------------------------------------------------------------------------------------

@torch.library.custom_op("sharpattn::triton_sharp_attention_forward", mutates_args=())
def _triton_forward(t: Tensor, x: Optional[Tensor], tau: float, seed: int, offset: int, mode: str,
                    residual: bool, eps: float, return_mask: bool,
                    return_tv: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from ..kernels import sharp_attention

    return sharp_attention.forward(t, x, tau, seed, offset, mode, residual, eps, return_mask,
                                   return_tv)


@torch.library.custom_op("sharpattn::triton_sharp_attention_backward", mutates_args=())
def _triton_backward(grad_out: Tensor, grad_tv: Optional[Tensor], t: Tensor, x: Optional[Tensor],
                     stats: Tensor, tau: float, seed: int, offset: int, mode: str, residual: bool,
                     eps: float) -> tuple[Tensor, Tensor]:
    from ..kernels import sharp_attention

    return sharp_attention.backward(grad_out, grad_tv, t, x, stats, tau, seed, offset, mode,
                                    residual, eps)


# --------------------------------------------------------------------------------------------
# Autograd, the same for every backend
# --------------------------------------------------------------------------------------------

def _register(prefix: str) -> None:
    forward_name, backward_name = (prefix + "sharp_attention_forward",
                                   prefix + "sharp_attention_backward")
    backward_op = getattr(torch.ops.sharpattn, backward_name)

    def setup_context(ctx, inputs, output):
        t, x, tau, seed, offset, mode, residual, eps, _, return_tv = inputs
        ctx.save_for_backward(t, x, output[2])
        ctx.attrs = (tau, seed, offset, mode, residual, eps)
        ctx.return_tv = return_tv
        # The returned mask is for pictures and analysis: it is detached, never silently
        # dropped from a gradient computation.
        ctx.mark_non_differentiable(output[1], output[2])

    def backward(ctx, grad_out, _grad_mask, _grad_stats, grad_tv):
        t, x, stats = ctx.saved_tensors
        # The per-sample sum's backward hands an expanded (N, C) view; the kernels read (N, C).
        grad_tv = grad_tv.contiguous() if ctx.return_tv else None
        grad_t, grad_x = backward_op(grad_out, grad_tv, t, x, stats, *ctx.attrs)
        return (grad_t, grad_x if x is not None else None) + (None,) * 8

    _registry.register_pair(forward_name, backward_name, _fake_forward, _fake_backward, backward,
                            setup_context)


_register("triton_")
if _registry.compiled_has("sharp_attention_forward"):
    _register("")
FORWARD = _registry.backend_table("sharp_attention_forward")
BACKWARD = _registry.backend_table("sharp_attention_backward")


# --------------------------------------------------------------------------------------------
# The tensor-argument form (tau and (seed, offset) as CPU tensors)
# --------------------------------------------------------------------------------------------

@torch.library.custom_op("sharpattn::sharp_attention_tensor_args_forward", mutates_args=())
def _tensor_args_forward(t: Tensor, x: Optional[Tensor], tau: Tensor, rng: Tensor, mode: str,
                         residual: bool, eps: float, return_mask: bool, return_tv: bool,
                         backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    seed, offset = rng.tolist()
    return _registry.pick(FORWARD, backend, "sharp_attention")(
        t, x, tau.item(), seed, offset, mode, residual, eps, return_mask, return_tv)


@torch.library.custom_op("sharpattn::sharp_attention_tensor_args_backward", mutates_args=())
def _tensor_args_backward(grad_out: Tensor, grad_tv: Optional[Tensor], t: Tensor,
                          x: Optional[Tensor], stats: Tensor, tau: Tensor, rng: Tensor, mode: str,
                          residual: bool, eps: float, backend: str) -> tuple[Tensor, Tensor]:
    seed, offset = rng.tolist()
    return _registry.pick(BACKWARD, backend, "sharp_attention")(
        grad_out, grad_tv, t, x, stats, tau.item(), seed, offset, mode, residual, eps)


@_tensor_args_forward.register_fake
def _(t, x, tau, rng, mode, residual, eps, return_mask, return_tv, backend):
    return _fake_forward(t, x, 1.0, 0, 0, mode, residual, eps, return_mask, return_tv)


@_tensor_args_backward.register_fake
def _(grad_out, grad_tv, t, x, stats, tau, rng, mode, residual, eps, backend):
    return _fake_backward(grad_out, grad_tv, t, x, stats, 1.0, 0, 0, mode, residual, eps)


def _tensor_args_setup_context(ctx, inputs, output):
    t, x, tau, rng, mode, residual, eps, _, return_tv, backend = inputs
    # tau is saved by value: a schedule updating it in place before backward must not change
    # the gradient of the forward that already ran.
    ctx.save_for_backward(t, x, output[2], tau.clone(), rng)
    ctx.attrs = (mode, residual, eps, backend)
    ctx.return_tv = return_tv
    ctx.mark_non_differentiable(output[1], output[2])


def _tensor_args_autograd(ctx, grad_out, _grad_mask, _grad_stats, grad_tv):
    t, x, stats, tau, rng = ctx.saved_tensors
    grad_tv = grad_tv.contiguous() if ctx.return_tv else None
    mode, residual, eps, backend = ctx.attrs
    grad_t, grad_x = _tensor_args_backward(grad_out, grad_tv, t, x, stats, tau, rng, mode,
                                           residual, eps, backend)
    return (grad_t, grad_x if x is not None else None) + (None,) * 8


_tensor_args_forward.register_autograd(_tensor_args_autograd,
                                       setup_context=_tensor_args_setup_context)
_tensor_args_backward.register_autograd(_registry.no_double_backward)


# --------------------------------------------------------------------------------------------
# Public functions (re-exported by sharpattn.functional)
# --------------------------------------------------------------------------------------------

def sharp_attention(t: Tensor, x: Tensor | None = None, *, tau: float, seed: int,
                    offset: int = 0, mode: str = "sample", residual: bool = True,
                    eps: float = 1e-6, return_mask: bool = False, return_tv: bool = False,
                    backend: str | None = None):
    """Sharp attention of SAN (docs/spec.md section 2): F = (1 + M) * T, or M * T with
    residual=False.

    M is a mask drawn per element from the per-plane min-max normalised mask input x (t itself
    when x is None): "sample" is the two-class Gumbel-Softmax relaxation with temperature tau,
    "hard" its exact Bernoulli step with the relaxed gradient (straight-through), "mean" the
    deterministic probability p (for evaluation). The noise is Philox4x32-10 from (seed, offset)
    (docs/spec.md section 1): the same on every backend, and recomputed in the backward, never
    stored.
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
        out, mask, _, tv = _registry.pick(FORWARD, name, "sharp_attention")(
            t, x, tau, _checks.as_int64(seed), offset, mode, bool(residual), eps,
            bool(return_mask), bool(return_tv))
        tv = tv.sum(dim=1) if return_tv else None
    extras = ((mask,) if return_mask else ()) + ((tv,) if return_tv else ())
    return (out,) + extras if extras else out


def draw_rng() -> Tensor:
    """A fresh (seed, offset) pair, (2,) int64, from PyTorch's default CPU generator.

    What SharpMask draws at every sampling forward, so `torch.manual_seed` reproduces a run on
    any device.
    """
    return torch.randint(0, SEED_LIMIT, (2,), dtype=torch.int64)


def sharp_attention_tensor_args(t: Tensor, x: Optional[Tensor], tau: Tensor, rng: Tensor, *,
                                mode: str, residual: bool, eps: float, return_mask: bool,
                                return_tv: bool,
                                backend: str) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """(F, M or an empty tensor, per-sample TV (N,) or None) on a compiled backend.

    tau is a 0-d float64 CPU tensor (updated in place by its owner: no recompile), rng the (2,)
    int64 CPU tensor (seed, offset) of draw_rng. The caller has checked the maps and resolved
    `backend` (not "reference").
    """
    out, mask, _, tv = _tensor_args_forward(t, x, tau, rng, mode, residual, eps, return_mask,
                                            return_tv, backend)
    return out, mask, (tv.sum(dim=1) if return_tv else None)
