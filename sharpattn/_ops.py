"""The registered operators: fake kernels and autograd for every compiled backend.

Each backend exposes a forward/backward pair of ops in the `sharpattn` namespace:

  cpu, cuda  sharpattn::sharp_attention_forward / _backward        (C++, csrc/)
  triton     sharpattn::triton_sharp_attention_forward / _backward  (Python custom ops over
                                                                      sharpattn.kernels)

and every pair gets the same fake kernels and the same autograd formula: the backward is itself
a registered op that recomputes the noise from (seed, offset) and reads only t, x and the
per-plane (min, max) statistics saved by the forward.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _extension
from .reference import accumulation_dtype


def _fake_forward(t, x, tau, seed, offset, mode, residual, eps, return_mask, return_tv):
    acc = accumulation_dtype(t.dtype)
    out = torch.empty_like(t)
    mask = torch.empty_like(t) if return_mask else t.new_empty(0)
    stats = t.new_empty((t.shape[0], t.shape[1], 2), dtype=acc)
    tv = t.new_empty((t.shape[0], t.shape[1]) if return_tv else (0,), dtype=acc)
    return out, mask, stats, tv


def _fake_backward(grad_out, grad_tv, t, x, stats, tau, seed, offset, mode, residual, eps):
    return torch.empty_like(t), (torch.empty_like(x) if x is not None else t.new_empty(0))


def _fake_tv_per_plane(a):
    return a.new_empty((a.shape[0], a.shape[1]), dtype=accumulation_dtype(a.dtype))


def _fake_tv_per_plane_backward(grad, a):
    return torch.empty_like(a)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("sharpattn: double backward (gradients of gradients) of sharp_attention "
                       "is not supported; use backend='reference' if you need it")


def _register_pair(forward_name: str, backward_name: str) -> None:
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

    torch.library.register_fake(f"sharpattn::{forward_name}")(_fake_forward)
    torch.library.register_fake(f"sharpattn::{backward_name}")(_fake_backward)
    torch.library.register_autograd(f"sharpattn::{forward_name}", backward,
                                    setup_context=setup_context)
    torch.library.register_autograd(f"sharpattn::{backward_name}", _no_double_backward,
                                    setup_context=lambda ctx, inputs, output: None)


def _register_tv_pair(forward_name: str, backward_name: str) -> None:
    backward_op = getattr(torch.ops.sharpattn, backward_name)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        return backward_op(grad.contiguous(), a)

    torch.library.register_fake(f"sharpattn::{forward_name}")(_fake_tv_per_plane)
    torch.library.register_fake(f"sharpattn::{backward_name}")(_fake_tv_per_plane_backward)
    torch.library.register_autograd(f"sharpattn::{forward_name}", backward,
                                    setup_context=setup_context)
    torch.library.register_autograd(f"sharpattn::{backward_name}", _no_double_backward,
                                    setup_context=lambda ctx, inputs, output: None)


@torch.library.custom_op("sharpattn::triton_sharp_attention_forward", mutates_args=())
def triton_sharp_attention_forward(t: Tensor, x: Optional[Tensor], tau: float, seed: int,
                                   offset: int, mode: str, residual: bool, eps: float,
                                   return_mask: bool,
                                   return_tv: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from .kernels import sharp_attention

    return sharp_attention.forward(t, x, tau, seed, offset, mode, residual, eps, return_mask,
                                   return_tv)


@torch.library.custom_op("sharpattn::triton_sharp_attention_backward", mutates_args=())
def triton_sharp_attention_backward(grad_out: Tensor, grad_tv: Optional[Tensor], t: Tensor,
                                    x: Optional[Tensor], stats: Tensor, tau: float, seed: int,
                                    offset: int, mode: str, residual: bool,
                                    eps: float) -> tuple[Tensor, Tensor]:
    from .kernels import sharp_attention

    return sharp_attention.backward(grad_out, grad_tv, t, x, stats, tau, seed, offset, mode,
                                    residual, eps)


@torch.library.custom_op("sharpattn::triton_tv_per_plane", mutates_args=())
def triton_tv_per_plane(a: Tensor) -> Tensor:
    from .kernels import tv_loss

    return tv_loss.tv_per_plane(a)


@torch.library.custom_op("sharpattn::triton_tv_per_plane_backward", mutates_args=())
def triton_tv_per_plane_backward(grad: Tensor, a: Tensor) -> Tensor:
    from .kernels import tv_loss

    return tv_loss.tv_per_plane_backward(grad, a)


_register_pair("triton_sharp_attention_forward", "triton_sharp_attention_backward")
_register_tv_pair("triton_tv_per_plane", "triton_tv_per_plane_backward")
if _extension.compiled():
    _register_pair("sharp_attention_forward", "sharp_attention_backward")
    _register_tv_pair("tv_per_plane", "tv_per_plane_backward")


def op(name: str, backend: str):
    """The registered op `name` of a compiled backend ("cpu", "cuda" or "triton")."""
    return getattr(torch.ops.sharpattn, f"triton_{name}" if backend == "triton" else name)


def philox_uniform_out(backend: str, out: Tensor, seed: int, offset: int) -> None:
    """Fill a contiguous (planes, positions) float32/float64 tensor with a backend's uniforms."""
    if backend == "triton":
        from .kernels import philox

        philox.philox_uniform_out(out, seed, offset)
    else:
        torch.ops.sharpattn.philox_uniform_out(out, seed, offset)
