"""The registered ops: opcheck (schema, fake kernel, autograd registration), torch.compile,
double backward, and NaN isolation."""

import pytest
import torch

from sharpattn import _checks
from sharpattn import functional as F
from sharpattn.ops import sharp_attention as SA

from helpers import feature_map, with_layout


def _opcheck_samples(device):
    base = dict(tau=0.6, seed=_checks.as_int64(2**63 + 5), offset=7, residual=True, eps=1e-6)
    for mode in ("sample", "mean", "hard"):
        for separate_x in (False, True):
            for layout in ("contiguous", "channels_last"):
                t = with_layout(feature_map((2, 3, 4, 5), device=device), layout)
                x = with_layout(feature_map((2, 3, 4, 5), device=device, seed=9), layout) \
                    if separate_x else None
                t.requires_grad_()
                if x is not None:
                    x.requires_grad_()
                yield (t, x, base["tau"], base["seed"], base["offset"], mode, base["residual"],
                       base["eps"], layout == "contiguous", mode != "hard")


def test_opcheck(backend_device):
    backend, device = backend_device
    if backend == "reference":
        pytest.skip("the reference is eager PyTorch, not a registered op")
    op = SA.FORWARD[backend]
    for args in _opcheck_samples(device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("mode", ["sample", "mean"])
def test_torch_compile_fullgraph(backend_device, mode):
    backend, device = backend_device
    t = feature_map((2, 3, 5, 7), device=device)
    x = feature_map((2, 3, 5, 7), device=device, seed=4)

    def block(t, x, seed):
        return F.sharp_attention(t, x, tau=0.5, seed=seed, mode=mode, backend=backend).sum(
            dim=(2, 3))

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager" if device == "cpu"
                             and backend == "triton" else "inductor")
    eager_t, comp_t = t.clone().requires_grad_(), t.clone().requires_grad_()
    expected = block(eager_t, x, 3)
    got = compiled(comp_t, x, 3)
    torch.testing.assert_close(got, expected)
    g = torch.randn_like(expected)
    torch.testing.assert_close(torch.autograd.grad(got, comp_t, g)[0],
                               torch.autograd.grad(expected, eager_t, g)[0])


def test_double_backward_raises_clearly(backend_device):
    backend, device = backend_device
    if backend == "reference":
        pytest.skip("the reference supports double backward through plain autograd")
    t = feature_map((1, 2, 3, 3), device=device).requires_grad_()
    out = F.sharp_attention(t, tau=1.0, seed=0, backend=backend)
    (grad,) = torch.autograd.grad(out.sum(), t, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad.sum().backward()


def test_returned_mask_is_detached(backend_device):
    backend, device = backend_device
    t = feature_map((1, 2, 3, 3), device=device).requires_grad_()
    out, mask = F.sharp_attention(t, tau=1.0, seed=0, backend=backend, return_mask=True)
    assert out.requires_grad and not mask.requires_grad


def test_nan_stays_in_its_plane(backend_device):
    backend, device = backend_device
    t = feature_map((2, 3, 4, 5), device=device)
    clean = F.sharp_attention(t, tau=0.7, seed=1, backend=backend)
    poisoned = t.clone()
    poisoned[1, 2, 0, 3] = float("nan")
    poisoned[0, 1, 2, 2] = float("inf")
    got = F.sharp_attention(poisoned, tau=0.7, seed=1, backend=backend)
    other = torch.ones(2, 3, dtype=torch.bool)
    other[1, 2] = other[0, 1] = False
    assert torch.equal(got[other], clean[other])
