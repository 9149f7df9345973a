"""Bounded updates: the global gradient-norm clip applied before every optimiser step."""

from __future__ import annotations

import math

import torch

__all__ = ["backward_and_step", "clip_gradients"]


def clip_gradients(parameters, max_norm=None):
    """Return ``(norm, clipped)``: the global L2 norm of the gradients before clipping, and
    whether they were scaled down to ``max_norm`` (``None``: only measured).

    Call it on unscaled gradients (after ``GradScaler.unscale_``) and, under DDP, after the
    backward has averaged them: every process then sees the same norm and clips identically.
    A non-finite norm (an fp16 overflow the grad scaler will skip) is returned, not clipped.
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0, False
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)
    value = float(norm)
    clipped = max_norm is not None and math.isfinite(value) and value > max_norm
    if clipped:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return value, clipped


def backward_and_step(loss, optimizer, scaler, parameters, max_norm=None):
    """One update: backward of the (scaled) loss, unscale, clip, optimiser step, scaler update.

    The clip sees the true gradients: ``scaler.unscale_`` first divides out the fp16 loss scale
    (a no-op for a disabled scaler), and a step whose gradients overflowed is skipped by the
    scaler as usual; without a scaler, non-finite gradients raise FloatingPointError before the
    step. Returns ``(pre-clip norm, clipped)`` as :func:`clip_gradients`.
    """
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    norm, clipped = clip_gradients(parameters, max_norm)
    if not math.isfinite(norm) and not scaler.is_enabled():  # fp16's scaler skips such a step itself
        raise FloatingPointError(f"gradient norm {norm}")
    scaler.step(optimizer)
    scaler.update()
    return norm, clipped
