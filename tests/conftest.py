"""Shared fixtures: which (backend, device) pairs this machine can test.

Triton runs on CPU tensors through its interpreter. TRITON_INTERPRET must be set before any
Triton kernel is decorated, so it is set here, before the tests import sharpattn.kernels; on a
machine with a GPU the Triton tests run compiled on the GPU instead.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import sharpattn  # noqa: E402
from sharpattn import backends  # noqa: E402

HAS_GPU = torch.cuda.is_available()

# (backend, device): every compiled backend on every device it targets, and the reference on the
# GPU (the reference on the CPU is what everything is compared with).
BACKEND_DEVICES = [
    ("cpu", "cpu"),
    ("triton", "cuda" if HAS_GPU else "cpu"),
    ("cuda", "cuda"),
    ("reference", "cuda"),
]


def _param(backend, device):
    marks = [pytest.mark.triton] if backend == "triton" else []
    if device == "cuda":
        marks.append(pytest.mark.cuda)
    return pytest.param((backend, device), id=f"{backend}-{device}", marks=marks)


@pytest.fixture(params=[_param(b, d) for b, d in BACKEND_DEVICES])
def backend_device(request):
    """A (backend, device) pair; skipped only when the machine has no such device.

    A backend that should exist on a present device but does not (say, the CUDA kernels were not
    compiled on a GPU machine) fails instead of skipping, so a broken build cannot hide.
    """
    backend, device = request.param
    if device == "cuda" and not HAS_GPU:
        pytest.skip("no CUDA GPU on this machine")
    reason = backends.why_unavailable(backend, device)
    if reason is not None:
        pytest.fail(f"backend {backend!r} should run on {device} here but: {reason}")
    return backend, device


def pytest_report_header(config):
    info = sharpattn.build_info()
    return [f"sharpattn build: compiled={info['compiled']} cpu={info['cpu_kernels']} "
            f"cuda={info['cuda_kernels']} torch={info['runtime_torch']} triton={info['triton']} "
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')}",
            f"sharpattn problems: {info['problems'] or 'none'}"]
