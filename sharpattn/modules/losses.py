"""Losses of the SAN recipe."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as F

REDUCTIONS = ("sum", "mean", "none")


def reduce_tv(per_sample: torch.Tensor, shape: torch.Size, reduction: str) -> torch.Tensor:
    """Apply a TV reduction to per-sample sums of a map of `shape` (N, C, H, W).

    "sum": eq. 6 summed over the batch; "mean": that sum divided by N*C*H*W, a per-element
    penalty; "none": the (N,) vector.
    """
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    return total / max(1, shape.numel())


class TVLoss(nn.Module):
    """Total variation penalty of SAN eq. 6 on an attention-aware feature map (N, C, H, W).

    reduction "mean" (the default, and what the training recipe uses with mu = 0.1) divides the
    batch sum by N*C*H*W. The paper's eq. 6 is a plain sum per feature map; at block-1 size
    (256 x 64 x 32) that sum is of order 1e5 for unit-scale features, so mu = 0.1 on the sum
    would outweigh a triplet loss of order 1 by four orders of magnitude and push every mask to
    a constant. Per element, the penalty is of order 1 and mu = 0.1 balances it against the
    triplet loss, whatever the block's size. "sum" and "none" give the literal eq. 6.
    """

    def __init__(self, reduction: str = "mean", backend: str | None = None):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"TVLoss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.backend = backend

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return reduce_tv(F.tv_loss(a, backend=self.backend), a.shape, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
