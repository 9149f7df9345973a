"""The CPU backend's vectorised kernels (csrc/cpu/vec_*) at every capability this CPU has.

The CPU backend picks AVX-512, AVX2 or the scalar code at run time; SHARPATTN_CPU_CAPABILITY
("default", "avx2", "avx512") caps the choice, read at every call. The other tests exercise only
the best capability, so this file runs each one against the reference, on plane sizes that are
not multiples of any vector width, and through the vector kernels' own edge paths: lanes that fall
back to the scalar four-log formula (mask-input ranges so wide that the one-log form would leave
the normal float32 range), and Philox counters whose low word wraps inside a
vector of counters.
"""

import pytest
import torch

from sharpattn import functional as F
from sharpattn import reference as R

from helpers import (VALUE_TOL, assert_as_accurate_as_reference, feature_map,
                     hard_mask_tolerant_close)

CAPABILITIES = ("default", "avx2", "avx512")
# 35, 51 and 1 positions: tails for 8 and 16 lanes; 64: whole vectors; 33 x 31: many of them.
SHAPES = [(2, 3, 5, 7), (1, 2, 17, 3), (2, 2, 1, 1), (1, 2, 8, 8), (1, 2, 33, 31)]


@pytest.fixture(params=CAPABILITIES)
def capability(request, monkeypatch):
    monkeypatch.setenv("SHARPATTN_CPU_CAPABILITY", request.param)
    return request.param


def _forward_backward(t, x, backend, g, g_tv, **kw):
    leaves = [v.clone().requires_grad_() for v in ([t] if x is None else [t, x])]
    out, mask, tv = F.sharp_attention(leaves[0], None if x is None else leaves[1],
                                      backend=backend, return_mask=True, return_tv=True, **kw)
    grads = torch.autograd.grad((out * g).sum() + (tv * g_tv).sum(), leaves)
    return out.detach(), mask, tv.detach(), grads


def _check(t, x, *, mode, residual=True, tau=0.7, seed=11, offset=5, eps=1e-6):
    g = feature_map(t.shape, relu=False, seed=3)
    g_tv = torch.rand(t.shape[0], generator=torch.Generator().manual_seed(4))
    kw = dict(tau=tau, seed=seed, offset=offset, mode=mode, residual=residual, eps=eps)
    out, mask, tv, grads = _forward_backward(t, x, "cpu", g, g_tv, **kw)
    r_out, r_mask, r_tv, r_grads = _forward_backward(t, x, "reference", g, g_tv, **kw)
    _, _, _, truth = _forward_backward(t.double(), None if x is None else x.double(),
                                       "reference", g.double(), g_tv.double(), **kw)
    tol = VALUE_TOL[torch.float32]
    differ = None
    if mode == "hard":
        differ = hard_mask_tolerant_close(mask, r_mask, t if x is None else x, seed=seed,
                                          offset=offset, eps=eps)
        torch.testing.assert_close(out[~differ], r_out[~differ], **tol)
    else:
        torch.testing.assert_close(mask, r_mask, **tol)
        torch.testing.assert_close(out, r_out, **tol)
    if differ is None:
        torch.testing.assert_close(tv, r_tv, rtol=1e-4, atol=1e-4)
    for got, ref, true in zip(grads, r_grads, truth):
        assert_as_accurate_as_reference(got, ref, true, ignore=differ)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", ("sample", "mean", "hard"))
@pytest.mark.parametrize("separate_x", [False, True], ids=["x_is_t", "separate_x"])
def test_every_capability_matches_reference(capability, shape, mode, separate_x):
    t = feature_map(shape, seed=1)
    x = feature_map(shape, seed=2) if separate_x else None
    _check(t, x, mode=mode)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).split(".")[-1])
def test_every_capability_half_inputs(capability, dtype):
    t = feature_map((2, 3, 9, 5), dtype, seed=1)
    out = F.sharp_attention(t, tau=0.8, seed=3, backend="cpu")
    ref = F.sharp_attention(t, tau=0.8, seed=3, backend="reference")
    torch.testing.assert_close(out, ref, **VALUE_TOL[dtype])


def _one_log_out_of_range(t, *, seed, offset, eps=1e-6):
    """Elements whose (x - lo + eps) u, (hi - x + eps)(1 - u) or their quotient is not a normal
    finite float32: those the vector kernels hand to the scalar formula."""
    u = R.philox_uniform(t.shape, seed=seed, offset=offset)
    c = (1 - u.double()).float()  # exact: 1 - u has its own 25-bit numerator
    lo, hi = t.amin((-2, -1), keepdim=True), t.amax((-2, -1), keepdim=True)
    num, den = (t - lo + eps) * u, (hi - t + eps) * c
    ratio = num / den
    fi = torch.finfo(torch.float32)
    ok = torch.ones_like(t, dtype=torch.bool)
    for v in (num, den, ratio):
        ok &= (v >= fi.tiny) & (v <= fi.max)
    return ~ok


@pytest.mark.parametrize("mode", ("sample", "hard"))
def test_scalar_fallback_lanes_for_wide_ranges(capability, mode):
    # x in [0, ~3e30]: at the plane minimum, with a small u, (x - lo + eps) u / ((hi - x + eps)
    # (1 - u)) falls below the normal float32 range (and near the maximum, with a small 1 - u,
    # above it), so those lanes take the four-log formula and the rest of the plane the one-log
    # one. A high tau keeps the masks of those lanes (z ~ -90) away from 0, so a wrong logit
    # there would show. Forward only: the backward gets its masks from the same code, and its
    # gradients at such ranges are a cancellation of terms of size 1e33 (any summation order
    # other than the reference's own is off by O(1) there).
    t = feature_map((2, 3, 9, 7), seed=1) * 1e30
    fallback = _one_log_out_of_range(t, seed=11, offset=5)
    assert 0 < fallback.sum() < fallback.numel() // 4  # both paths in use
    kw = dict(tau=50.0, seed=11, offset=5, mode=mode, return_mask=True)
    out, mask = F.sharp_attention(t, backend="cpu", **kw)
    ref_out, ref_mask = F.sharp_attention(t, backend="reference", **kw)
    keep = torch.ones_like(t, dtype=torch.bool)
    if mode == "hard":
        keep = ~hard_mask_tolerant_close(mask, ref_mask, t, seed=11, offset=5, eps=1e-6)
    torch.testing.assert_close(mask[keep], ref_mask[keep], **VALUE_TOL[torch.float32])
    torch.testing.assert_close(out[keep], ref_out[keep], **VALUE_TOL[torch.float32])


def test_counter_low_word_wraps_inside_a_vector(capability):
    # 64 counters per plane from offset 2^32 - 21: the low counter word wraps inside the first
    # plane's vectors of 8 or 16 counters, and the carry must reach the high word of those lanes.
    # The masks agree with the reference within 2e-6 only if every uniform is the same.
    t = feature_map((1, 2, 16, 16), seed=1)
    _check(t, None, mode="sample", offset=(1 << 32) - 21)


def test_nan_plane_leaves_other_planes_alone(capability):
    t = feature_map((2, 3, 6, 5), seed=1)
    t[1, 2, 3, 4] = float("nan")
    out, tv = F.sharp_attention(t, tau=0.9, seed=2, backend="cpu", return_tv=True)
    ref = F.sharp_attention(t, tau=0.9, seed=2, backend="reference")
    keep = torch.ones(2, 3, dtype=torch.bool)
    keep[1, 2] = False
    torch.testing.assert_close(out[keep], ref[keep], **VALUE_TOL[torch.float32])
    assert torch.isfinite(tv[0])


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 2, 1, 9), (2, 1, 6, 1), (1, 1, 1, 1),
                                   (1, 2, 33, 31)], ids=lambda s: "x".join(map(str, s)))
def test_every_capability_tv_loss(capability, shape):
    a = feature_map(shape, relu=False, seed=1)
    got = F.tv_loss(a, backend="cpu")
    torch.testing.assert_close(got, R.tv_loss(a), rtol=1e-5, atol=1e-6)
    g = torch.rand(shape[0], generator=torch.Generator().manual_seed(5))
    leaf, ref_leaf = a.clone().requires_grad_(), a.clone().requires_grad_()
    (grad,) = torch.autograd.grad(F.tv_loss(leaf, backend="cpu"), leaf, g)
    (ref_grad,) = torch.autograd.grad(R.tv_loss(ref_leaf), ref_leaf, g)
    torch.testing.assert_close(grad, ref_grad, **VALUE_TOL[torch.float32])


@pytest.mark.parametrize("shape,offset", [((3, 5, 7), 5), ((2, 9001), (1 << 32) - 4100),
                                          ((4, 1), (1 << 63) - 2), ((5,), 0)],
                         ids=["planes", "chunks_and_wrap", "tiny_rows", "one_row"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64],
                         ids=lambda d: str(d).split(".")[-1])
def test_every_capability_philox_uniform(capability, shape, offset, dtype):
    # Rows of 9001 positions span several of the kernel's 1024-counter chunks; the offset makes
    # the low counter word wrap inside the second row.
    got = F.philox_uniform(shape, seed=0x1234_5678_9ABC, offset=offset, dtype=dtype, backend="cpu")
    want = R.philox_uniform(shape, seed=0x1234_5678_9ABC, offset=offset, dtype=dtype)
    assert torch.equal(got, want)
