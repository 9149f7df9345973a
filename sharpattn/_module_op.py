"""Sharp attention with tau and the noise counter as tensors: the form the modules call.

`functional.sharp_attention` takes tau, seed and offset as Python numbers. Inside a model under
`torch.compile` that costs twice: every new tau (annealed each epoch, eq. 9) is a new constant and
recompiles the graph, and a seed drawn per step would have to leave the graph (`.item()`) to
become an int. Here both travel as small CPU tensors:

  tau  0-d float64 tensor, updated in place by the module (same tensor, new value: no recompile)
  rng  (2,) int64 tensor (seed, offset), drawn by `torch.randint` from the default CPU generator
       inside the graph, so `torch.manual_seed` reproduces a run on any device

and two registered ops turn them into numbers only in their implementations, which run outside
the traced graph. Reading a CPU tensor's value costs no device synchronisation. The ops then call
the compiled backend's own forward/backward op, so the numerics are exactly those of
`functional.sharp_attention` with the same (tau, seed, offset).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _ops

SEED_LIMIT = 1 << 62  # seeds and offsets drawn in [0, 2^62): valid for every op, never negative


def draw_rng() -> Tensor:
    """A fresh (seed, offset) pair from PyTorch's default CPU generator."""
    return torch.randint(0, SEED_LIMIT, (2,), dtype=torch.int64)


@torch.library.custom_op("sharpattn::sharp_attention_tensor_args_forward", mutates_args=())
def _forward(t: Tensor, x: Optional[Tensor], tau: Tensor, rng: Tensor, mode: str,
             residual: bool, eps: float, return_mask: bool, return_tv: bool,
             backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    seed, offset = rng.tolist()
    return _ops.op("sharp_attention_forward", backend)(
        t, x, tau.item(), seed, offset, mode, residual, eps, return_mask, return_tv)


@torch.library.custom_op("sharpattn::sharp_attention_tensor_args_backward", mutates_args=())
def _backward(grad_out: Tensor, grad_tv: Optional[Tensor], t: Tensor, x: Optional[Tensor],
              stats: Tensor, tau: Tensor, rng: Tensor, mode: str, residual: bool, eps: float,
              backend: str) -> tuple[Tensor, Tensor]:
    seed, offset = rng.tolist()
    return _ops.op("sharp_attention_backward", backend)(
        grad_out, grad_tv, t, x, stats, tau.item(), seed, offset, mode, residual, eps)


@_forward.register_fake
def _(t, x, tau, rng, mode, residual, eps, return_mask, return_tv, backend):
    return _ops._fake_forward(t, x, 1.0, 0, 0, mode, residual, eps, return_mask, return_tv)


@_backward.register_fake
def _(grad_out, grad_tv, t, x, stats, tau, rng, mode, residual, eps, backend):
    return _ops._fake_backward(grad_out, grad_tv, t, x, stats, 1.0, 0, 0, mode, residual, eps)


def _setup_context(ctx, inputs, output):
    t, x, tau, rng, mode, residual, eps, _, return_tv, backend = inputs
    # tau is saved by value: a schedule updating it in place before backward must not change
    # the gradient of the forward that already ran.
    ctx.save_for_backward(t, x, output[2], tau.clone(), rng)
    ctx.attrs = (mode, residual, eps, backend)
    ctx.return_tv = return_tv
    ctx.mark_non_differentiable(output[1], output[2])


def _autograd_backward(ctx, grad_out, _grad_mask, _grad_stats, grad_tv):
    t, x, stats, tau, rng = ctx.saved_tensors
    grad_tv = grad_tv.contiguous() if ctx.return_tv else None
    mode, residual, eps, backend = ctx.attrs
    grad_t, grad_x = _backward(grad_out, grad_tv, t, x, stats, tau, rng, mode, residual, eps,
                               backend)
    return (grad_t, grad_x if x is not None else None) + (None,) * 8


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)
_backward.register_autograd(_ops._no_double_backward)


def sharp_attention(t: Tensor, x: Optional[Tensor], tau: Tensor, rng: Tensor, *, mode: str,
                    residual: bool, eps: float, return_mask: bool, return_tv: bool,
                    backend: str) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """(F, M or an empty tensor, per-sample TV (N,) or None) on a compiled backend."""
    out, mask, _, tv = _forward(t, x, tau, rng, mode, residual, eps, return_mask, return_tv,
                                backend)
    return out, mask, (tv.sum(dim=1) if return_tv else None)
