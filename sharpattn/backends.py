"""Which operator backends exist on this machine, forcing one, and picking the default.

Backends: "reference" (eager PyTorch, sharpattn.reference), "cpu" (C++ kernels), "cuda" (CUDA C++
kernels) and "triton" (sharpattn.kernels). The default for a device is the fastest available
one: "cpu" on the CPU, "cuda" then "triton" on a GPU, "reference" when nothing compiled is there.
`SHARPATTN_BACKEND` sets the default; `use(name)` overrides it in a block; a `backend=` argument
overrides both.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import torch

from . import _extension

NAMES = ("reference", "cpu", "cuda", "triton")

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("sharpattn_backend",
                                                                     default=None)


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def why_unavailable(name: str, device="cpu") -> str | None:
    """None when backend `name` can run on `device`, else the reason it cannot."""
    device = torch.device(device)
    if name not in NAMES:
        return f"unknown backend {name!r}; choose from {NAMES}"
    if name == "reference":
        return None
    if name == "cpu":
        if device.type != "cpu":
            return f"the 'cpu' backend runs on CPU tensors, not {device.type}"
        if not _extension.has_kernel("sharp_attention_forward", "CPU"):
            return f"sharpattn._C is not built or did not load: {_extension.build_info()['problems']}"
        return None
    if name == "cuda":
        if device.type != "cuda":
            return f"the 'cuda' backend runs on CUDA tensors, not {device.type}"
        if not _extension.has_kernel("sharp_attention_forward", "CUDA"):
            note = _extension.build_info()["cuda_build_note"]
            return f"the CUDA kernels were not compiled into sharpattn._C ({note})"
        return None
    # triton
    status = _extension.build_info()["triton"]
    if status.startswith("not installed"):
        return f"triton is {status}"
    if device.type == "cpu" and not _triton_interpreted():
        return "Triton runs CPU tensors only in its interpreter (set TRITON_INTERPRET=1)"
    if device.type not in ("cpu", "cuda"):
        return f"the 'triton' backend does not run on {device.type}"
    return None


def available(device="cpu") -> list[str]:
    """Names of the backends that can run on `device`."""
    return [name for name in NAMES if why_unavailable(name, device) is None]


def report() -> dict[str, dict[str, str]]:
    """For the CPU and (when present) the GPU: each backend's availability or the reason not."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {dev: {name: why_unavailable(name, dev) or "available" for name in NAMES}
            for dev in devices}


def default(device="cpu") -> str:
    """The backend used when none is forced: the fastest one available for the device."""
    device = torch.device(device)
    preference = ("cuda", "triton", "reference") if device.type == "cuda" else ("cpu", "reference")
    return next(name for name in preference if why_unavailable(name, device) is None)


@contextlib.contextmanager
def use(name: str | None):
    """Force backend `name` for the ops called inside the block (None: back to the default)."""
    if name is not None and name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose from {NAMES}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def resolve(name: str | None, device) -> str:
    """The backend an op call runs on: argument, then use(), then SHARPATTN_BACKEND, then default."""
    for source, candidate in (("backend=", name), ("sharpattn.backends.use", _forced.get()),
                              ("SHARPATTN_BACKEND", os.environ.get("SHARPATTN_BACKEND") or None)):
        if candidate is None:
            continue
        reason = why_unavailable(candidate, device)
        if reason is not None:
            raise RuntimeError(f"sharpattn: backend {candidate!r} (from {source}) is not "
                               f"available for {torch.device(device)} tensors: {reason}")
        return candidate
    return default(device)
