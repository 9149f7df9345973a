"""Drop-in nn.Modules over the sharpattn operators."""

from .block import SharpAttentionBlock
from .collect import (attention_blocks, recording_gradients, recording_masks, set_temperature,
                      tv_penalty)
from .context import ContextAwareUnit
from .losses import TVLoss
from .masks import PowerMask, SharpMask, SoftMask, ThresholdMask
from .occlusion import GridOcclusion
from .schedule import TemperatureSchedule

__all__ = ["ContextAwareUnit", "GridOcclusion", "PowerMask", "SharpAttentionBlock", "SharpMask",
           "SoftMask", "TVLoss", "TemperatureSchedule", "ThresholdMask", "attention_blocks",
           "recording_gradients", "recording_masks", "set_temperature", "tv_penalty"]
