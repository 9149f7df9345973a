"""Drop-in nn.Modules over the sharpattn operators."""

from .losses import TVLoss
from .occlusion import GridOcclusion

__all__ = ["GridOcclusion", "TVLoss"]
