"""sharp_attention on every backend against sharpattn.reference (docs/spec.md section 2)."""

import math

import pytest
import torch

from sharpattn import functional as F
from sharpattn import reference as R

from helpers import (VALUE_TOL, assert_as_accurate_as_reference, feature_map,
                     hard_mask_tolerant_close, with_layout)

MODES = ("sample", "mean", "hard")
ODD_SHAPES = [(2, 3, 5, 7), (1, 1, 1, 1), (3, 2, 1, 9), (1, 4, 13, 1), (2, 5, 6, 6)]


def _run(t, x, backend, grad=None, **kw):
    """Forward (out, mask) and, when grad is given, the gradients of <out, grad> w.r.t. t and x."""
    leaves = [v.requires_grad_() for v in ([t] if x is None else [t, x])]
    out, mask = F.sharp_attention(t, x, backend=backend, return_mask=True, **kw)
    grads = torch.autograd.grad(out, leaves, grad) if grad is not None else None
    return out, mask, grads


def _compare(backend, device, shape, dtype, mode, residual, separate_x, layout="contiguous",
             tau=0.7, seed=11, offset=5, relu=True):
    t = with_layout(feature_map(shape, dtype, device, relu=relu, seed=1), layout)
    x = with_layout(feature_map(shape, dtype, device, relu=relu, seed=2), layout) \
        if separate_x else None
    g = feature_map(shape, dtype, device, relu=False, seed=3)
    kw = dict(tau=tau, seed=seed, offset=offset, mode=mode, residual=residual)
    out, mask, grads = _run(t.detach().clone(), None if x is None else x.detach().clone(),
                            backend, g, **kw)
    ref_t, ref_x = t.detach().cpu(), None if x is None else x.detach().cpu()
    ref_out, ref_mask, ref_grads = _run(ref_t.clone(), None if ref_x is None else ref_x.clone(),
                                        "reference", g.cpu(), **kw)
    # The float64 truth of the same input values, for judging gradient accuracy.
    _, _, true_grads = _run(ref_t.double(), None if ref_x is None else ref_x.double(),
                            "reference", g.cpu().double(), **kw)

    assert out.dtype == dtype and out.shape == t.shape and out.device == t.device
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    tol = VALUE_TOL[dtype]
    differ = None
    if mode == "hard":
        differ = hard_mask_tolerant_close(mask, ref_mask, ref_t if ref_x is None else ref_x,
                                          seed=seed, offset=offset, eps=1e-6)
        keep = ~differ
        torch.testing.assert_close(out.cpu()[keep], ref_out[keep], **tol)
    else:
        torch.testing.assert_close(mask.cpu(), ref_mask, **tol)
        torch.testing.assert_close(out.cpu(), ref_out, **tol)
    for got, ref, truth in zip(grads, ref_grads, true_grads):
        assert got.dtype == dtype and got.shape == t.shape
        assert_as_accurate_as_reference(got, ref, truth, ignore=differ)


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("separate_x", [False, True], ids=["x_is_t", "separate_x"])
def test_matches_reference_float32(backend_device, shape, mode, separate_x):
    backend, device = backend_device
    _compare(backend, device, shape, torch.float32, mode, True, separate_x)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("residual", [True, False], ids=["cil", "plain"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).split(".")[-1])
def test_matches_reference_dtypes(backend_device, mode, residual, dtype):
    backend, device = backend_device
    _compare(backend, device, (2, 3, 5, 7), dtype, mode, residual, separate_x=True)


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
@pytest.mark.parametrize("separate_x", [False, True], ids=["x_is_t", "separate_x"])
def test_matches_reference_layouts(backend_device, layout, separate_x):
    backend, device = backend_device
    for mode in MODES:
        _compare(backend, device, (2, 3, 5, 7), torch.float32, mode, True, separate_x, layout)


def test_large_plane_tiled_path(backend_device):
    # 130 x 131 = 17,030 elements per plane: more than fits on chip in one block.
    backend, device = backend_device
    for mode in ("sample", "mean"):
        _compare(backend, device, (1, 2, 130, 131), torch.float32, mode, True, separate_x=True)


def test_constant_planes_and_no_relu(backend_device):
    backend, device = backend_device
    _compare(backend, device, (2, 3, 4, 5), torch.float32, "sample", True, False, relu=False)
    t = torch.full((2, 3, 4, 4), 2.5, device=device)
    out, mask = F.sharp_attention(t, tau=1.0, seed=0, mode="mean", backend=backend,
                                  return_mask=True)
    assert torch.equal(mask.cpu(), torch.full((2, 3, 4, 4), 0.5))  # p = 1/2 on a constant plane
    assert torch.equal(out.cpu(), torch.full((2, 3, 4, 4), 3.75))


@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 0, 4, 5)])
def test_empty_batch(backend_device, shape):
    backend, device = backend_device
    t = torch.zeros(shape, device=device, requires_grad=True)
    out, mask = F.sharp_attention(t, tau=1.0, seed=0, backend=backend, return_mask=True)
    assert out.shape == shape and mask.shape == shape
    out.sum().backward()
    assert t.grad.shape == shape


def test_passing_x_equal_to_t_matches_x_none(backend_device):
    # x=t explicitly goes through the separate-x path; autograd adds both gradients into t.
    backend, device = backend_device
    t = feature_map((2, 3, 5, 7), device=device)
    g = feature_map((2, 3, 5, 7), device=device, relu=False, seed=5)
    kw = dict(tau=0.5, seed=3, backend=backend)
    a = t.clone().requires_grad_()
    b = t.clone().requires_grad_()
    out_a = F.sharp_attention(a, **kw)
    out_b = F.sharp_attention(b, b, **kw)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    (ga,), (gb,) = torch.autograd.grad(out_a, a, g), torch.autograd.grad(out_b, b, g)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6 * gb.abs().max().item())


@pytest.mark.parametrize("mode,separate_x", [
    ("sample", False), ("sample", True), ("mean", False), ("mean", True), ("hard", True)])
def test_gradcheck_float64(backend_device, mode, separate_x):
    # No ReLU here: finite differences are meaningless at the kinks where elements tie. Hard
    # mode's forward is a step function of x, so finite differences exist only along t (x held
    # fixed); its straight-through x gradient is compared with the reference's instead.
    backend, device = backend_device
    shape = (2, 2, 3, 4)
    t = feature_map(shape, torch.float64, device, relu=False, seed=7).requires_grad_()
    x = feature_map(shape, torch.float64, device, relu=False, seed=8)
    kw = dict(tau=0.8, seed=5, offset=2, mode=mode, backend=backend)
    if mode == "hard":
        inputs, fn = (t,), lambda t: F.sharp_attention(t, x, **kw)
    elif separate_x:
        inputs, fn = (t, x.requires_grad_()), lambda t, x: F.sharp_attention(t, x, **kw)
    else:
        inputs, fn = (t,), lambda t: F.sharp_attention(t, **kw)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_64bit_element_offsets(backend_device):
    # A view whose elements sit beyond 2^31 in its storage: the kernels must index with 64 bits.
    # torch.empty does not touch the 4 GiB it reserves, so this costs almost no memory on a CPU.
    backend, device = backend_device
    if backend == "triton" and device == "cpu":
        pytest.skip("Triton's interpreter copies the whole 4 GiB storage; runs on a GPU instead")
    far = 2**31 + 7
    storage = torch.empty(far + 64, dtype=torch.float16, device=device)
    t = storage.as_strided((2, 2, 3, 4), (far, 12, 4, 1))  # sample 1 starts past 2^31
    t.copy_(feature_map((2, 2, 3, 4), torch.float16, device, seed=4))
    out = F.sharp_attention(t, tau=0.9, seed=3, backend=backend)
    expected = F.sharp_attention(t.contiguous(), tau=0.9, seed=3, backend="reference")
    torch.testing.assert_close(out.cpu(), expected.cpu(), **VALUE_TOL[torch.float16])
