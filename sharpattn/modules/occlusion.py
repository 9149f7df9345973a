"""Grid occlusion of AAA-Net (Algorithm 1) as a module."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as F


class GridOcclusion(nn.Module):
    """Occluded copies of a feature map, one per grid cell (AAA-Net's attention assignment).

    pooled=False returns (N, G, C, H, W), copy k with grid cell k zeroed; pooled=True returns
    (N, G, C), the global average pool of each copy, computed in one read of x without
    materialising the G copies (what a GAP + FC classifier sees for each occluded copy).
    """

    def __init__(self, grid: tuple[int, int] | int = (4, 4), pooled: bool = False,
                 backend: str | None = None):
        super().__init__()
        self.grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
        self.pooled = pooled
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = F.grid_occlusion_pool if self.pooled else F.grid_occlusion
        return op(x, self.grid, backend=self.backend)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, pooled={self.pooled}"
