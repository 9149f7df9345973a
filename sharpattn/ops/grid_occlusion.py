"""Grid occlusion of AAA-Net (docs/spec.md section 4): fake kernels, autograd, backends, public
functions.

Registered ops:

  sharpattn::grid_occlusion{,_backward}, grid_occlusion_pool{,_backward}   cpu, cuda (sharpattn._C)
  sharpattn::triton_grid_occlusion{,_backward}, triton_grid_occlusion_pool{,_backward}
                                                                  triton (sharpattn.kernels)

All four are linear in their tensor argument, and each backward op is the adjoint of its forward
op, so the backward of a backward op is the forward op again: gradients of any order work.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from .. import _checks, backends, reference
from . import _registry

__all__ = ["grid_occlusion", "grid_occlusion_pool"]


# --------------------------------------------------------------------------------------------
# Fake kernels: the shapes, dtypes and layouts the real kernels return.
# --------------------------------------------------------------------------------------------

def _fake_occlusion(x, gh, gw):
    N, C, H, W = x.shape
    return x.new_empty((N, gh * gw, C, H, W))


def _fake_occlusion_backward(grad, gh, gw):
    N, _, C, H, W = grad.shape
    return grad.new_empty((N, C, H, W))


def _fake_pool(x, gh, gw):
    N, C = x.shape[:2]
    return x.new_empty((N, gh * gw, C))


def _fake_pool_backward(grad, x, gh, gw):
    return torch.empty_like(x)


# --------------------------------------------------------------------------------------------
# Triton backend
# --------------------------------------------------------------------------------------------

@torch.library.custom_op("sharpattn::triton_grid_occlusion", mutates_args=())
def _triton_occlusion(x: Tensor, gh: int, gw: int) -> Tensor:
    from ..kernels import grid_occlusion

    return grid_occlusion.grid_occlusion(x, gh, gw)


@torch.library.custom_op("sharpattn::triton_grid_occlusion_backward", mutates_args=())
def _triton_occlusion_backward(grad: Tensor, gh: int, gw: int) -> Tensor:
    from ..kernels import grid_occlusion

    return grid_occlusion.grid_occlusion_backward(grad, gh, gw)


@torch.library.custom_op("sharpattn::triton_grid_occlusion_pool", mutates_args=())
def _triton_pool(x: Tensor, gh: int, gw: int) -> Tensor:
    from ..kernels import grid_occlusion

    return grid_occlusion.grid_occlusion_pool(x, gh, gw)


@torch.library.custom_op("sharpattn::triton_grid_occlusion_pool_backward", mutates_args=())
def _triton_pool_backward(grad: Tensor, x: Tensor, gh: int, gw: int) -> Tensor:
    from ..kernels import grid_occlusion

    return grid_occlusion.grid_occlusion_pool_backward(grad, x, gh, gw)


# --------------------------------------------------------------------------------------------
# Autograd: every backward is the adjoint op, and the adjoint of that is the forward op.
# --------------------------------------------------------------------------------------------

def _register(prefix: str) -> None:
    """Fake kernels and autograd of the four ops named `prefix` + grid_occlusion...."""
    names = [prefix + n for n in ("grid_occlusion", "grid_occlusion_backward",
                                  "grid_occlusion_pool", "grid_occlusion_pool_backward")]
    occ, occ_bwd, pool, pool_bwd = (getattr(torch.ops.sharpattn, n) for n in names)

    def save_grid(ctx, inputs, output):
        ctx.grid = inputs[-2:]

    def save_x_and_grid(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])  # only its shape, dtype and layout are used
        ctx.grid = inputs[-2:]

    def occ_backward(ctx, grad):
        return occ_bwd(grad, *ctx.grid), None, None

    def occ_bwd_backward(ctx, grad):
        return occ(grad, *ctx.grid), None, None

    def pool_backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return pool_bwd(grad, x, *ctx.grid), None, None

    def pool_bwd_backward(ctx, grad):
        return pool(grad, *ctx.grid), None, None, None

    for name, fake in zip(names, (_fake_occlusion, _fake_occlusion_backward, _fake_pool,
                                  _fake_pool_backward)):
        torch.library.register_fake(f"sharpattn::{name}")(fake)
    torch.library.register_autograd(f"sharpattn::{names[0]}", occ_backward,
                                    setup_context=save_grid)
    torch.library.register_autograd(f"sharpattn::{names[1]}", occ_bwd_backward,
                                    setup_context=save_grid)
    torch.library.register_autograd(f"sharpattn::{names[2]}", pool_backward,
                                    setup_context=save_x_and_grid)
    torch.library.register_autograd(f"sharpattn::{names[3]}", pool_bwd_backward,
                                    setup_context=save_grid)


_register("triton_")
if _registry.compiled_has("grid_occlusion"):
    _register("")
OCCLUSION = _registry.backend_table("grid_occlusion")
POOL = _registry.backend_table("grid_occlusion_pool")


# --------------------------------------------------------------------------------------------
# Public functions (re-exported by sharpattn.functional)
# --------------------------------------------------------------------------------------------

def _grid(grid, x: Tensor) -> tuple[int, int]:
    """(gh, gw) from an int g (meaning (g, g)) or a pair of ints, checked against x's map."""
    if isinstance(grid, numbers.Integral) and not isinstance(grid, bool):
        grid = (grid, grid)
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2 and
            all(isinstance(g, numbers.Integral) and not isinstance(g, bool) for g in grid)):
        raise TypeError(f"sharpattn: grid must be an int or a pair of ints (gh, gw), got {grid!r}")
    gh, gw = int(grid[0]), int(grid[1])
    H, W = x.shape[2], x.shape[3]
    if gh < 1 or gw < 1:
        raise ValueError(f"sharpattn: grid {(gh, gw)} must have gh >= 1 and gw >= 1")
    if gh > H or gw > W:
        raise ValueError(f"sharpattn: grid {(gh, gw)} is larger than the feature map "
                         f"(H, W) = {(H, W)}: every cell needs at least one row and one column")
    return gh, gw


def grid_occlusion(x: Tensor, grid=(4, 4), *, backend: str | None = None) -> Tensor:
    """The G = gh*gw occluded copies of AAA-Net's Algorithm 1, shape (N, G, C, H, W).

    Copy k is x with grid cell k = a*gw + b set to zero; cell (a, b) covers rows
    [floor(a*H/gh), floor((a+1)*H/gh)) and columns [floor(b*W/gw), floor((b+1)*W/gw)), so
    uneven maps get cells that differ by at most one row or column. The gradient sums, for each
    element, the copies that keep it. The compiled backends return a contiguous tensor.
    """
    _checks.feature_map(x, "x")
    gh, gw = _grid(grid, x)
    name = backends.resolve(backend, x.device)
    if name == "reference":
        return reference.grid_occlusion(x, (gh, gw))
    return _registry.pick(OCCLUSION, name, "grid occlusion")(x, gh, gw)


def grid_occlusion_pool(x: Tensor, grid=(4, 4), *, backend: str | None = None) -> Tensor:
    """The spatial mean of every occluded copy, shape (N, G, C), in x's dtype.

    Equal to grid_occlusion(x, grid).mean(dim=(-2, -1)) (what a global-average-pool + FC head
    sees for each copy), but computed from per-cell sums in one read of x:
    P[n, k, c] = (sum of plane (n, c) - sum of its cell k) / (H*W), summed in float64.
    """
    _checks.feature_map(x, "x")
    gh, gw = _grid(grid, x)
    name = backends.resolve(backend, x.device)
    if name == "reference":
        return reference.grid_occlusion_pool(x, (gh, gw))
    return _registry.pick(POOL, name, "grid occlusion")(x, gh, gw)
