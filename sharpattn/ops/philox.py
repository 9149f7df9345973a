"""Portable counter-based uniforms (docs/spec.md section 1): fake kernel, backends, public function.

Registered ops, filling a contiguous (planes, positions) float32/float64 tensor in place:

  sharpattn::philox_uniform_out          cpu, cuda (sharpattn._C)
  sharpattn::triton_philox_uniform_out   triton (sharpattn.kernels)

No autograd: uniforms have no gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks, backends, reference
from . import _registry


# --------------------------------------------------------------------------------------------
# Fake kernel: the op writes into `out` and returns nothing.
# --------------------------------------------------------------------------------------------

def _fake_fill(out, seed, offset):
    return None


# --------------------------------------------------------------------------------------------
# Triton backend
# --------------------------------------------------------------------------------------------

@torch.library.custom_op("sharpattn::triton_philox_uniform_out", mutates_args=("out",))
def _triton_fill(out: Tensor, seed: int, offset: int) -> None:
    from ..kernels import philox

    philox.philox_uniform_out(out, seed, offset)


_triton_fill.register_fake(_fake_fill)
if _registry.compiled_has("philox_uniform_out"):
    torch.library.register_fake("sharpattn::philox_uniform_out")(_fake_fill)
FILL = _registry.backend_table("philox_uniform_out")


# --------------------------------------------------------------------------------------------
# Public function (re-exported by sharpattn.functional)
# --------------------------------------------------------------------------------------------

def philox_uniform(shape, *, seed: int, offset: int = 0, device=None,
                   dtype: torch.dtype = torch.float32, backend: str | None = None) -> Tensor:
    """The uniforms u that docs/spec.md section 1 assigns to each element of a map of this shape.

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
        _registry.pick(FILL, name, "philox_uniform")(out, _checks.as_int64(seed), offset)
    return out.reshape(shape)
