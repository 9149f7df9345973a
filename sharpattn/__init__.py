"""sharpattn: fused sharp attention (SAN) and AAA-Net operators for person re-identification.

    import sharpattn
    sharpattn.functional.sharp_attention(t, tau=1.0, seed=0)
    sharpattn.backends.available("cpu")
    sharpattn.build_info()

    block = sharpattn.SharpAttentionBlock(torchvision.models.resnet50().layer1)
    model = sharpattn.models.san_resnet50()
"""

# ops registers the operators' fake kernels and autograd on import.
from . import _extension, backends, functional, ops, reference  # noqa: F401
from ._extension import build_info
from .modules import (ContextAwareUnit, GridOcclusion, SharpAttentionBlock, SharpMask,
                      TemperatureSchedule, TVLoss, recording_gradients, recording_masks,
                      set_temperature, tv_penalty)

__version__ = "0.1.0"
__all__ = ["ContextAwareUnit", "GridOcclusion", "SharpAttentionBlock", "SharpMask",
           "TVLoss", "TemperatureSchedule", "backends", "build_info", "functional", "models",
           "recording_gradients", "recording_masks", "reference", "set_temperature", "tv_penalty"]


def __getattr__(name):
    # sharpattn.models imports torchvision, sharpattn.export torch.export and onnx helpers:
    # loaded on first use, not with the operators.
    if name in ("models", "export"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sharpattn' has no attribute {name!r}")

_extension.warn_if_broken()
