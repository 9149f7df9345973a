"""Host-side helpers shared by the Triton kernel modules.

  accumulation_dtype  the compute dtype of an input dtype (docs/spec.md section 0: float32, or
                      float64 for float64 inputs), as the (Triton, torch) pair the launchers need
  launcher            runs a host launcher under its tensors' GPU: Triton launches on
                      torch.cuda.current_device() and that device's current stream, so without it a
                      tensor on cuda:1 while cuda:0 is current is launched on the wrong GPU (an
                      illegal memory access) and unordered with cuda:1's stream
"""

from __future__ import annotations

import functools

import torch
import triton.language as tl


def accumulation_dtype(dtype: torch.dtype):
    """(Triton dtype, torch dtype) in which a kernel computes for inputs of `dtype`."""
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _device_of(args, kwargs) -> torch.device | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def launcher(fn):
    """Decorate a host function that launches kernels on its first tensor argument's device.

    The guard is entered once per call, around every launch the function makes; the callers
    check beforehand that all tensors of a call share one device.
    """

    @functools.wraps(fn)
    def on_tensor_device(*args, **kwargs):
        device = _device_of(args, kwargs)
        if device is None or device.type != "cuda":
            return fn(*args, **kwargs)
        with torch.cuda.device(device):
            return fn(*args, **kwargs)

    return on_tensor_device
