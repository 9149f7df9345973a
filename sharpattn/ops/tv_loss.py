"""Total variation penalty (docs/spec.md section 3, SAN eq. 6-7): fake kernels, autograd, backends,
public function.

Registered ops, per (n, c) plane (forward: (N, C) in the accumulation dtype; backward: dL/da):

  sharpattn::tv_per_plane{,_backward}          cpu, cuda (sharpattn._C)
  sharpattn::triton_tv_per_plane{,_backward}   triton (sharpattn.kernels)

The backward is a registered op (eq. 7, scaled per plane); double backward raises.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks, backends, reference
from . import _registry


# --------------------------------------------------------------------------------------------
# Fake kernels
# --------------------------------------------------------------------------------------------

def _fake_forward(a):
    return a.new_empty((a.shape[0], a.shape[1]), dtype=reference.accumulation_dtype(a.dtype))


def _fake_backward(grad, a):
    return torch.empty_like(a)


# --------------------------------------------------------------------------------------------
# Triton backend
# --------------------------------------------------------------------------------------------

@torch.library.custom_op("sharpattn::triton_tv_per_plane", mutates_args=())
def _triton_forward(a: Tensor) -> Tensor:
    from ..kernels import tv_loss

    return tv_loss.tv_per_plane(a)


@torch.library.custom_op("sharpattn::triton_tv_per_plane_backward", mutates_args=())
def _triton_backward(grad: Tensor, a: Tensor) -> Tensor:
    from ..kernels import tv_loss

    return tv_loss.tv_per_plane_backward(grad, a)


# --------------------------------------------------------------------------------------------
# Autograd, the same for every backend
# --------------------------------------------------------------------------------------------

def _register(prefix: str) -> None:
    forward_name, backward_name = prefix + "tv_per_plane", prefix + "tv_per_plane_backward"
    backward_op = getattr(torch.ops.sharpattn, backward_name)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        return backward_op(grad.contiguous(), a)

    _registry.register_pair(forward_name, backward_name, _fake_forward, _fake_backward, backward,
                            setup_context)


_register("triton_")
if _registry.compiled_has("tv_per_plane"):
    _register("")
FORWARD = _registry.backend_table("tv_per_plane")


# --------------------------------------------------------------------------------------------
# Public function (re-exported by sharpattn.functional)
# --------------------------------------------------------------------------------------------

def tv_loss(a: Tensor, *, backend: str | None = None) -> Tensor:
    """Total variation of SAN eq. 6 per sample: shape (N,), float32 (float64 for float64 input).

    Sums the squared differences of vertical and horizontal neighbours over each sample's
    (C, H, W); its gradient is eq. 7, 2 (D1^T D1 A_c + A_c D2 D2^T) per channel.
    """
    _checks.feature_map(a, "a")
    name = backends.resolve(backend, a.device)
    if name == "reference":
        return reference.tv_loss(a)
    return _registry.pick(FORWARD, name, "tv_loss")(a).sum(dim=1)
