"""Every Triton launch runs under its tensors' GPU, not whichever GPU is current.

Triton launches on torch.cuda.current_device() and that device's stream. Checked on any machine:
fake tensors on cuda:1, a patched current device (cuda:0) that torch.cuda.device switches, and
every kernel launch recorded with the device current at that moment instead of being run.
"""

import contextlib

import pytest
import torch

pytest.importorskip("triton")
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from triton.runtime.jit import KernelInterface  # noqa: E402

from sharpattn.kernels import grid_occlusion, philox, sharp_attention, tv_loss  # noqa: E402

N, C, H, W = 2, 3, 6, 5


def _launchers():
    """{name: call} of every host launcher in sharpattn.kernels, on cuda:1 fake tensors."""
    def m(*shape, dtype=torch.float32):
        return torch.empty(shape, device="cuda:1", dtype=dtype)

    t, x = m(N, C, H, W), m(N, C, H, W)
    stats, grad_tv = m(N, C, 2), m(N, C)
    return dict([
        ("sharp_attention.forward", lambda: sharp_attention.forward(
            t, x, 0.5, 1, 0, "sample", True, 1e-6, True, True)),
        ("sharp_attention.backward", lambda: sharp_attention.backward(
            m(N, C, H, W), grad_tv, t, x, stats, 0.5, 1, 0, "sample", True, 1e-6)),
        ("tv_loss.tv_per_plane", lambda: tv_loss.tv_per_plane(t)),
        ("tv_loss.tv_per_plane_backward", lambda: tv_loss.tv_per_plane_backward(grad_tv, t)),
        ("grid_occlusion.grid_occlusion", lambda: grid_occlusion.grid_occlusion(t, 2, 2)),
        ("grid_occlusion.grid_occlusion_backward",
         lambda: grid_occlusion.grid_occlusion_backward(m(N, 4, C, H, W), 2, 2)),
        ("grid_occlusion.grid_occlusion_pool", lambda: grid_occlusion.grid_occlusion_pool(t, 2, 2)),
        ("grid_occlusion.grid_occlusion_pool_backward",
         lambda: grid_occlusion.grid_occlusion_pool_backward(m(N, 4, C), t, 2, 2)),
        ("philox.philox_uniform_out", lambda: philox.philox_uniform_out(m(4, 10), 1, 0)),
    ])


LAUNCHERS = ["sharp_attention.forward", "sharp_attention.backward", "tv_loss.tv_per_plane",
             "tv_loss.tv_per_plane_backward", "grid_occlusion.grid_occlusion",
             "grid_occlusion.grid_occlusion_backward", "grid_occlusion.grid_occlusion_pool",
             "grid_occlusion.grid_occlusion_pool_backward", "philox.philox_uniform_out"]


@pytest.fixture
def fake_gpus(monkeypatch):
    """cuda:0 current; torch.cuda.device switches it; launches record it and do not run."""
    state = {"current": 0, "launches": []}

    @contextlib.contextmanager
    def device(d):
        index = torch.device(d).index if not isinstance(d, int) else d
        previous, state["current"] = state["current"], index
        try:
            yield
        finally:
            state["current"] = previous

    def launch(kernel, grid):
        return lambda *args, **kwargs: state["launches"].append(
            (kernel.__name__, state["current"]))

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
    monkeypatch.setattr(KernelInterface, "__getitem__", launch)
    return state


@pytest.mark.parametrize("name", LAUNCHERS)
def test_every_launch_runs_on_the_tensors_device(fake_gpus, name):
    with FakeTensorMode():
        launchers = _launchers()
        assert sorted(launchers) == sorted(LAUNCHERS)
        launchers[name]()
    launches = fake_gpus["launches"]
    assert launches, f"{name} launched no kernel"
    assert all(device == 1 for _, device in launches), (name, launches)
    assert fake_gpus["current"] == 0, "the guard must restore the current device"


def test_cpu_tensors_enter_no_cuda_guard(fake_gpus):
    # The interpreter runs CPU tensors: no torch.cuda call may be needed for them.
    entered = []
    fake_gpus_device = torch.cuda.device

    def device(d):
        entered.append(d)
        return fake_gpus_device(d)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "device", device)
        tv_loss.tv_per_plane(torch.rand(N, C, H, W))
    assert entered == [] and fake_gpus["launches"]
