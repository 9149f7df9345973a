"""Which operator backends exist on this machine, forcing one, and picking the default.

Backends: "reference" (eager PyTorch, sharpattn.reference), "cpu" (C++ kernels), "cuda" (CUDA C++
kernels) and "triton" (sharpattn.kernels). The default for a device is the fastest available
one: "cpu" on the CPU, "cuda" then "triton" on a GPU, "reference" when nothing compiled is there.
`SHARPATTN_BACKEND` sets the default; `use(name)` overrides it in a block; a `backend=` argument
overrides both.
"""

from __future__ import annotations

import contextlib
import os

import torch

from . import _extension

NAMES = ("reference", "cpu", "cuda", "triton")

# The innermost use(...) block's backend. A plain module global, not a ContextVar, so that
# torch.compile reads it while tracing without a graph break.
_forced: list[str] = []


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
        if not _extension.CPU_KERNELS:
            return ("sharpattn._C is not built or did not load; see "
                    "sharpattn.build_info()['problems']")
        return None
    if name == "cuda":
        if device.type != "cuda":
            return f"the 'cuda' backend runs on CUDA tensors, not {device.type}"
        if not _extension.CUDA_KERNELS:
            return ("the CUDA kernels were not compiled into sharpattn._C; see "
                    "sharpattn.build_info()['cuda_build_note']")
        return None
    # triton
    if _extension.TRITON_VERSION is None:
        return "triton is not installed (pip install triton)"
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
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def resolve(name: str | None, device) -> str:
    """The backend an op call runs on: argument, then use(), then SHARPATTN_BACKEND, then default."""
    candidates = (("backend=", name),
                  ("sharpattn.backends.use", _forced[-1] if _forced else None),
                  ("SHARPATTN_BACKEND", os.environ.get("SHARPATTN_BACKEND") or None))
    for source, candidate in candidates:
        if candidate is None:
            continue
        reason = why_unavailable(candidate, device)
        if reason is not None:
            raise RuntimeError(f"sharpattn: backend {candidate!r} (from {source}) is not "
                               f"available for {torch.device(device)} tensors: {reason}")
        return candidate
    return default(device)
