"""The operators users call, re-exported from their op modules (sharpattn/ops/, one per op).

Each checks its arguments once, picks a backend once and calls one registered op, whose
autograd calls one registered backward op.

  sharp_attention, tv_loss, grid_occlusion, grid_occlusion_pool, philox_uniform
                                          the public ops (docs/spec.md section 5)
  sharp_attention_tensor_args, draw_rng   the form modules call (tau and (seed, offset) as CPU
                                          tensors: no recompile under torch.compile)
"""

from __future__ import annotations

from .ops.grid_occlusion import grid_occlusion, grid_occlusion_pool
from .ops.philox import philox_uniform
from .ops.sharp_attention import draw_rng, sharp_attention, sharp_attention_tensor_args
from .ops.tv_loss import tv_loss

__all__ = ["sharp_attention", "tv_loss", "grid_occlusion", "grid_occlusion_pool",
           "philox_uniform", "sharp_attention_tensor_args", "draw_rng"]
