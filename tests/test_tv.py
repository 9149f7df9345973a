"""Total variation (docs/spec.md section 3, SAN eq. 6-7), standalone and fused into
sharp_attention."""

import pytest
import torch

import sharpattn
from sharpattn.ops import tv_loss as TV
from sharpattn import functional as F
from sharpattn import reference as R

from helpers import (VALUE_TOL, assert_as_accurate_as_reference, feature_map,
                     hard_mask_tolerant_close, with_layout)

SHAPES = [(2, 3, 5, 7), (1, 2, 1, 9), (2, 1, 6, 1), (1, 1, 1, 1), (3, 2, 4, 4)]


def _difference_matrices(H, W, dtype=torch.float64):
    """D1 in R^{(H-1) x H} and D2 in R^{W x (W-1)} exactly as printed in SAN section III-B."""
    d1 = torch.zeros(H - 1, H, dtype=dtype)
    for i in range(H - 1):
        d1[i, i], d1[i, i + 1] = 1, -1
    d2 = torch.zeros(W, W - 1, dtype=dtype)
    for j in range(W - 1):
        d2[j, j], d2[j + 1, j] = 1, -1
    return d1, d2


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_reference_is_the_matrix_form_of_eq6_and_eq7(shape):
    a = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    d1, d2 = _difference_matrices(shape[2], shape[3])
    # eq. 6: sum_c ||D1 A_c||^2 + ||A_c D2||^2, per sample.
    expected = ((d1 @ a).square().sum(dim=(1, 2, 3)) + (a @ d2).square().sum(dim=(1, 2, 3)))
    got = R.tv_loss(a)
    torch.testing.assert_close(got, expected.detach())
    # eq. 7: dTV/dA_c = 2 (D1^T D1 A_c + A_c D2 D2^T).
    (grad,) = torch.autograd.grad(got.sum(), a)
    torch.testing.assert_close(grad, 2 * (d1.T @ d1 @ a + a @ d2 @ d2.T).detach())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).split(".")[-1])
def test_tv_loss_matches_reference(backend_device, shape, dtype):
    backend, device = backend_device
    a = feature_map(shape, dtype, device, relu=False, seed=1)
    got = F.tv_loss(a.clone().requires_grad_(), backend=backend)
    want = R.tv_loss(a.cpu())
    assert got.shape == (shape[0],) and got.dtype == R.accumulation_dtype(dtype)
    torch.testing.assert_close(got.detach().cpu(), want, rtol=1e-5 if dtype != torch.float64
                               else 1e-12, atol=1e-6)
    leaf = a.clone().requires_grad_()
    g = torch.rand(shape[0], dtype=got.dtype, device=device)
    (grad,) = torch.autograd.grad(F.tv_loss(leaf, backend=backend), leaf, g)
    ref_leaf = a.cpu().clone().requires_grad_()
    (ref_grad,) = torch.autograd.grad(R.tv_loss(ref_leaf), ref_leaf, g.cpu())
    torch.testing.assert_close(grad.cpu(), ref_grad, **VALUE_TOL[dtype])


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_tv_loss_layouts(backend_device, layout):
    backend, device = backend_device
    a = feature_map((2, 3, 5, 7), device=device, relu=False)
    torch.testing.assert_close(F.tv_loss(with_layout(a, layout), backend=backend).cpu(),
                               R.tv_loss(a.cpu()), rtol=1e-5, atol=1e-6)


def test_tv_loss_empty_and_gradcheck(backend_device):
    backend, device = backend_device
    for shape in [(0, 3, 4, 4), (2, 0, 4, 4)]:
        a = torch.zeros(shape, device=device, requires_grad=True)
        tv = F.tv_loss(a, backend=backend)
        assert tv.shape == (shape[0],)
        tv.sum().backward()
        assert a.grad.shape == shape
    a = feature_map((2, 2, 3, 4), torch.float64, device, relu=False).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: F.tv_loss(a, backend=backend), (a,))


@pytest.mark.parametrize("mode", ["sample", "mean", "hard"])
@pytest.mark.parametrize("separate_x", [False, True], ids=["x_is_t", "separate_x"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 2, 1, 6), (2, 2, 5, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_fused_tv_matches_tv_of_mask_times_t(backend_device, mode, separate_x, shape):
    """The fused TV equals tv_loss(M * T) of the same call's mask, and its gradient (with the
    output's) matches the reference's."""
    backend, device = backend_device
    t = feature_map(shape, device=device, seed=1)
    x = feature_map(shape, device=device, seed=2) if separate_x else None
    kw = dict(tau=0.6, seed=21, offset=4, mode=mode)
    out, mask, tv = F.sharp_attention(t, x, backend=backend, return_mask=True, return_tv=True,
                                      **kw)
    assert tv.shape == (shape[0],) and tv.dtype == torch.float32
    torch.testing.assert_close(tv.cpu(), R.tv_loss((mask * t).cpu()), rtol=1e-5, atol=1e-5)

    def grads(t, x, backend, device):
        leaves = [v.clone().to(device).requires_grad_() for v in ([t] if x is None else [t, x])]
        out, tv = F.sharp_attention(*leaves, backend=backend, return_tv=True, **kw)
        g_out = feature_map(shape, relu=False, seed=7).to(device)
        g_tv = torch.tensor([0.3, -1.7][: shape[0]], device=device)
        return torch.autograd.grad([out, tv], leaves, [g_out, g_tv])

    got = grads(t, x, backend, device)
    t_cpu, x_cpu = t.cpu(), None if x is None else x.cpu()
    ref = grads(t_cpu, x_cpu, "reference", "cpu")
    truth = grads(t_cpu.double(), None if x is None else x_cpu.double(), "reference", "cpu")
    ignore = None
    if mode == "hard":
        ref_mask = F.sharp_attention(t_cpu, x_cpu, backend="reference", return_mask=True, **kw)[1]
        ignore = hard_mask_tolerant_close(mask, ref_mask, t_cpu if x is None else x_cpu,
                                          seed=21, offset=4, eps=1e-6)
        # A flipped element changes A, hence the TV gradient of its neighbours too.
        ignore = torch.nn.functional.max_pool2d(ignore.float(), 3, 1, 1).bool()
    for g, r, tr in zip(got, ref, truth):
        assert_as_accurate_as_reference(g, r, tr, ignore=ignore)


def test_fused_tv_half_and_channels_last(backend_device):
    backend, device = backend_device
    for dtype, layout in [(torch.float16, "contiguous"), (torch.bfloat16, "channels_last"),
                          (torch.float32, "channels_last"), (torch.float32, "sliced")]:
        t = with_layout(feature_map((2, 3, 5, 7), dtype, device), layout)
        _, mask, tv = F.sharp_attention(t, tau=0.5, seed=3, backend=backend, return_mask=True,
                                        return_tv=True)
        # The reference TV of the same call, from its float32 mask and T.
        _, ref_mask, ref_tv = R.sharp_attention(t.cpu(), tau=0.5, seed=3, return_tv=True)
        torch.testing.assert_close(tv.cpu(), ref_tv, rtol=1e-4, atol=1e-4)


def test_fused_tv_empty(backend_device):
    backend, device = backend_device
    t = torch.zeros(0, 3, 4, 4, device=device, requires_grad=True)
    out, tv = F.sharp_attention(t, tau=1.0, seed=0, backend=backend, return_tv=True)
    assert tv.shape == (0,)
    (out.sum() + tv.sum()).backward()
    assert t.grad.shape == t.shape


def test_fused_tv_gradcheck(backend_device):
    backend, device = backend_device
    t = feature_map((2, 2, 3, 4), torch.float64, device, relu=False, seed=3).requires_grad_()
    x = feature_map((2, 2, 3, 4), torch.float64, device, relu=False, seed=4).requires_grad_()

    def fn(t, x):
        out, tv = F.sharp_attention(t, x, tau=0.9, seed=2, backend=backend, return_tv=True)
        return out, tv

    assert torch.autograd.gradcheck(fn, (t, x), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_tv_opcheck_and_compile(backend_device):
    backend, device = backend_device
    if backend == "reference":
        pytest.skip("the reference is eager PyTorch, not a registered op")
    for layout in ("contiguous", "channels_last"):
        a = with_layout(feature_map((2, 3, 4, 5), device=device, relu=False), layout)
        torch.library.opcheck(TV.FORWARD[backend], (a.requires_grad_(),))
    a = feature_map((2, 3, 4, 5), device=device, relu=False)
    compiled = torch.compile(lambda a: F.tv_loss(a, backend=backend) * 2, fullgraph=True,
                             backend="aot_eager" if backend == "triton" and device == "cpu"
                             else "inductor")
    torch.testing.assert_close(compiled(a), F.tv_loss(a, backend=backend) * 2)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_tv_module_reductions(reduction):
    a = torch.randn(3, 2, 4, 5)
    per_sample = R.tv_loss(a)
    expected = {"sum": per_sample.sum(), "mean": per_sample.sum() / a.numel(),
                "none": per_sample}[reduction]
    torch.testing.assert_close(sharpattn.TVLoss(reduction)(a), expected)
    with pytest.raises(ValueError, match="reduction"):
        sharpattn.TVLoss("avg")


def test_tv_loss_bad_input():
    with pytest.raises(ValueError, match="4-D"):
        F.tv_loss(torch.rand(3, 4, 5))
    with pytest.raises(TypeError, match="float"):
        F.tv_loss(torch.ones(1, 1, 2, 2, dtype=torch.int32))
