"""Drop-in nn.Modules over the sharpattn operators."""

from .losses import TVLoss

__all__ = ["TVLoss"]
