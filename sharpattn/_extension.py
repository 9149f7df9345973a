"""Loading sharpattn._C and reporting what it was built with (sharpattn.build_info)."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sysconfig
import warnings

import torch

_load_error: str | None = None
try:
    from . import _C  # noqa: F401  (importing runs the C++ operator registrations)
except ImportError as error:  # not built, or built against another torch (undefined symbol)
    _C = None
    _load_error = f"{type(error).__name__}: {error}"

try:
    # What setup.py recorded for this interpreter's build (one tree can hold several).
    _config = importlib.import_module("sharpattn._build_config").BUILDS.get(
        sysconfig.get_config_var("EXT_SUFFIX"), {})
except (ImportError, AttributeError):
    _config = {}


def compiled() -> bool:
    """True when sharpattn._C (the C++ kernels) loaded."""
    return _C is not None


def _has_kernel(dispatch_key: str) -> bool:
    return compiled() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "sharpattn::sharp_attention_forward", dispatch_key)


def _triton_version() -> str | None:
    # Looked up without importing triton (slow, and not needed by CPU-only users).
    if importlib.util.find_spec("triton") is None:
        return None
    return importlib.metadata.version("triton")


# Fixed for the life of the process, and plain data so that torch.compile can read them while
# tracing a model without a graph break.
CPU_KERNELS = _has_kernel("CPU")
CUDA_KERNELS = _has_kernel("CUDA")
TRITON_VERSION = _triton_version()


def build_info() -> dict:
    """What was compiled, for which torch and CUDA, and what is wrong with it (if anything)."""
    info = {
        "compiled": compiled(),
        "load_error": _load_error,
        "cpu_kernels": CPU_KERNELS,
        "cuda_kernels": CUDA_KERNELS,
        "built_with_torch": _config.get("torch_version"),
        "built_with_cuda": _config.get("torch_cuda_version"),
        "cuda_build_note": _config.get("cuda_reason"),
        "cuda_arch_list": _config.get("cuda_arch_list"),
        "runtime_torch": torch.__version__,
        "runtime_cuda": torch.version.cuda,
        "gpu_visible": torch.cuda.is_available(),
        "triton": TRITON_VERSION or "not installed (pip install triton)",
    }
    info["problems"] = _problems(info)
    return info


def _major_minor(version: str | None) -> str | None:
    return ".".join(version.split("+")[0].split(".")[:2]) if version else None


def _problems(info: dict) -> list[str]:
    problems = []
    if not info["compiled"]:
        problems.append(f"sharpattn._C did not load ({info['load_error']}); only the reference "
                        "and Triton backends work. Rebuild with "
                        "'pip install --no-build-isolation .' against this torch")
    if info["built_with_torch"] and \
            _major_minor(info["built_with_torch"]) != _major_minor(info["runtime_torch"]):
        problems.append(f"sharpattn._C was built for torch {info['built_with_torch']} but torch "
                        f"{info['runtime_torch']} is running; rebuild sharpattn")
    if info["compiled"] and info["gpu_visible"] and not info["cuda_kernels"]:
        problems.append("a GPU is visible but the CUDA kernels were not compiled "
                        f"({info['cuda_build_note']}); the Triton or reference backend is used")
    if info["cuda_kernels"] and info["built_with_cuda"] and info["runtime_cuda"] and \
            info["built_with_cuda"].split(".")[0] != info["runtime_cuda"].split(".")[0]:
        problems.append(f"the CUDA kernels were built for CUDA {info['built_with_cuda']} but torch "
                        f"uses CUDA {info['runtime_cuda']}; rebuild sharpattn")
    return problems


def warn_if_broken() -> None:
    """Import-time warning, only when something the user would rely on is missing."""
    for problem in _problems(build_info()):
        warnings.warn(f"sharpattn: {problem}", RuntimeWarning, stacklevel=3)
