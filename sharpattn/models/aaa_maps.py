"""The two maps AAA-Net builds from a feature map: the stage-2 target M_occ of the hardest
occluded copy, and the stage-3 0/1 mask. Pure functions of tensors, so the model, the recipe and
the pictures share one definition (the decisions are in docs/aaanet.md).
"""

from __future__ import annotations

import math

import torch

from ..reference import grid_keep_masks

OCCLUSION_TARGETS = ("response", "keep")
MASK_RULES = ("threshold", "top")
MASK_ZEROS = ("high", "low")


def response_map(f_r: torch.Tensor) -> torch.Tensor:
    """(N, h, w): the channel mean of |f_r| divided by its per-sample maximum, so in [0, 1]
    like a sigmoid attention map whatever the feature scale (all-zero maps stay zero)."""
    r = f_r.detach().abs().float().mean(1)
    peak = r.flatten(1).amax(1).clamp_min(torch.finfo(r.dtype).tiny)
    return r / peak[:, None, None]


def keep_masks(cell: torch.Tensor, height: int, width: int, grid) -> torch.Tensor:
    """(N, h, w) float: 0 inside grid cell ``cell[n]`` (row-major, the cells of
    grid_occlusion), 1 elsewhere."""
    masks = grid_keep_masks(height, width, tuple(grid), device=cell.device)
    return masks[cell.long()]


def occlusion_target(cell: torch.Tensor, f_r: torch.Tensor, grid, kind: str = "response"):
    """M_occ (N, h, w), detached (a target), for the hardest cell of each sample.

    kind "response": the hardest copy itself reduced to one map: response_map(f_r) with the
      cell set to zero, values in [0, 1];
    kind "keep": only where the copy was occluded: the 0/1 keep mask of the cell.
    """
    if kind not in OCCLUSION_TARGETS:
        raise ValueError(f"occlusion_target must be one of {OCCLUSION_TARGETS}, got {kind!r}")
    if f_r.dim() != 4:
        raise ValueError(f"f_r must be (N, C, h, w), got shape {tuple(f_r.shape)}")
    if cell.shape != f_r.shape[:1]:
        raise ValueError(f"cell {tuple(cell.shape)} must hold one index per sample "
                         f"({f_r.shape[0]},)")
    keep = keep_masks(cell, f_r.shape[2], f_r.shape[3], grid)
    if kind == "keep":
        return keep
    return response_map(f_r) * keep


def binary_mask(score: torch.Tensor, rule: str = "threshold", threshold: float = 0.5,
                fraction: float = 1 / 3, zeros: str = "high") -> torch.Tensor:
    """(N, 1, h, w) 0/1 mask (float, detached) from a per-sample score map (N, h, w).

    rule "threshold": the positions with score >= threshold are "high";
    rule "top": the ceil(fraction * h * w) positions of highest score per sample are "high"
      (ties broken by position, first wins);
    zeros "high" zeroes the high positions (occlude what the attention found), "low" keeps them
      and zeroes the rest (f_r times the binarised map, Algorithm 2 read literally).
    """
    if rule not in MASK_RULES:
        raise ValueError(f"mask rule must be one of {MASK_RULES}, got {rule!r}")
    if zeros not in MASK_ZEROS:
        raise ValueError(f"mask zeros must be one of {MASK_ZEROS}, got {zeros!r}")
    if score.dim() != 3:
        raise ValueError(f"the score map must be (N, h, w), got shape {tuple(score.shape)}")
    score = score.detach()
    if rule == "threshold":
        high = score >= threshold
    else:
        if not 0 < fraction <= 1:
            raise ValueError(f"mask fraction must be in (0, 1], got {fraction}")
        flat = score.flatten(1)
        # ceil, forgiving the rounding of fractions like 1/3 (1/3 * 48 must give 16, not 17)
        k = max(1, math.ceil(fraction * flat.shape[1] - 1e-9))
        # A stable sort, so equal scores are ranked by position and the count is exactly k.
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
        high = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True).view_as(score)
    keep = ~high if zeros == "high" else high
    return keep.unsqueeze(1).to(score.dtype if score.is_floating_point() else torch.float32)
