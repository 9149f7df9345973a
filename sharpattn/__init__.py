"""sharpattn: fused sharp attention (SAN) and AAA-Net operators for person re-identification.

    import sharpattn
    sharpattn.functional.sharp_attention(t, tau=1.0, seed=0)
    sharpattn.backends.available("cpu")
    sharpattn.build_info()
"""

# _ops and _grid_ops register the operators' fake kernels and autograd on import.
from . import _extension, _grid_ops, _ops, backends, functional, reference  # noqa: F401
from ._extension import build_info
from .modules import GridOcclusion, TVLoss

__version__ = "0.1.0"
__all__ = ["GridOcclusion", "TVLoss", "backends", "build_info", "functional", "reference"]

_extension.warn_if_broken()
