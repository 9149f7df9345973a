"""SharpMask's gradient bounds (range_eps, logit_floor, detach_range): the eager path they use."""

import pytest
import torch

import sharpattn
from sharpattn import reference
from sharpattn.modules.masks import bounded_sharp_attention

OFF = dict(range_eps=None, logit_floor=None, detach_range=False)


def _run(x, t=None, mode="sample", tau=0.7, **bounds):
    x = x.clone().requires_grad_(True)
    out, m, _ = bounded_sharp_attention(t if t is not None else x, None if t is None else x, tau=tau, seed=11,
                                        offset=3, mode=mode, residual=True, eps=1e-6, return_mask=True,
                                        return_tv=False, **{**OFF, **bounds})
    # fixed upstream weights in [-1, 1], so that the test sees signed gradients
    (g,) = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), x)
    return out.detach(), m, g


@pytest.mark.parametrize("mode", ["sample", "hard", "mean"])
def test_with_every_bound_off_it_is_the_reference(mode):
    torch.manual_seed(0)
    t = torch.randn(2, 3, 5, 7, dtype=torch.float64).relu()  # ties at 0 after the ReLU
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    out, m, g = _run(x, t, mode=mode)
    xr = x.clone().requires_grad_(True)
    ref_out, ref_m, _ = reference.sharp_attention(t, xr, tau=0.7, seed=11, offset=3, mode=mode)
    assert torch.equal(out, ref_out.detach()) and torch.equal(m, ref_m.detach())
    (ref_g,) = torch.autograd.grad((ref_out * torch.linspace(-1, 1, ref_out.numel()).view_as(ref_out)).sum(), xr)
    torch.testing.assert_close(g, ref_g, rtol=0, atol=0)


def _extremes(x):
    flat = x.flatten(-2)
    lo = flat == flat.amin(-1, keepdim=True)
    hi = flat == flat.amax(-1, keepdim=True)
    return (lo | hi).view_as(x)


def test_detach_range_changes_the_gradient_only_at_each_planes_min_and_max():
    torch.manual_seed(1)
    t = torch.rand(2, 4, 6, 5, dtype=torch.float64)
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    out_a, _, g_free = _run(x, t)
    out_b, _, g_detached = _run(x, t, detach_range=True)
    assert torch.equal(out_a, out_b)  # the forward is the same
    changed = (g_free - g_detached).abs() > 1e-12
    assert changed.any() and not (changed & ~_extremes(x)).any()


def test_logit_floor_zeroes_the_gradient_of_clamped_positions():
    torch.manual_seed(2)
    t = torch.rand(1, 2, 8, 8, dtype=torch.float64)
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    _, _, g = _run(x, t, logit_floor=0.2)
    lo = x.amin((-2, -1), keepdim=True)
    hi = x.amax((-2, -1), keepdim=True)
    p = (x - lo + 1e-6) / (hi - lo + 2e-6)
    clamped = ((p < 0.2) | (p > 0.8)) & ~_extremes(x)
    assert clamped.sum() > 10 and torch.all(g[clamped] == 0)
    assert torch.all(g[~clamped & ~_extremes(x)] != 0)


def test_range_eps_sets_the_mean_mask_and_bounds_the_sampled_gradient():
    x = torch.linspace(0, 1, 30, dtype=torch.float64).view(1, 1, 5, 6).clone()
    x[0, 0, 0, 1] = 1e-7  # a position next to the plane's minimum: 1 / (x - lo + eps) is huge
    t = torch.ones_like(x)
    # a high temperature keeps M (1 - M) away from 0 whatever the noise, so the logit's
    # derivative shows through: 1 / (x - lo + eps) near the minimum without the bound
    r, tau = 0.05, 50.0
    _, m, _ = _run(x, t, mode="mean", range_eps=r)
    e = 1e-6 + r * 1.0
    torch.testing.assert_close(m, (x - 0 + e) / (1 + 2 * e))
    # |dM/dx| <= M (1 - M) / tau * (1 / (x - lo + e) + 1 / (hi - x + e)) <= 1 / (4 tau) * 2 / e per
    # position (upstream weights are in [-1, 1]); without the bound it is far larger there.
    interior = ~_extremes(x)
    _, _, g_bounded = _run(x, t, tau=tau, detach_range=True, range_eps=r)
    _, _, g_free = _run(x, t, tau=tau, detach_range=True)
    assert g_bounded[interior].abs().max() <= 2 / (4 * tau * e)
    assert g_free[interior].abs().max() > 10 * 2 / (4 * tau * e)


def test_sharp_mask_uses_the_bounds_and_keeps_the_fused_forward():
    torch.manual_seed(3)
    t = torch.rand(2, 3, 6, 4)
    plain, bounded = sharpattn.SharpMask(0.8), sharpattn.SharpMask(0.8, detach_range=True)
    assert not plain.bounded and bounded.bounded and "detach_range=True" in repr(bounded)
    torch.manual_seed(5)
    a, ma, _ = plain(t, return_mask=True)
    torch.manual_seed(5)
    b, mb, _ = bounded(t, return_mask=True)
    # same Philox noise: the fused kernel and the eager path agree to float32 rounding
    torch.testing.assert_close(mb, ma, rtol=0, atol=2e-6)
    torch.testing.assert_close(b, a, rtol=0, atol=4e-6)


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="logit_floor"):
        sharpattn.SharpMask(logit_floor=0.5)
    with pytest.raises(ValueError, match="range_eps"):
        sharpattn.SharpMask(range_eps=0.0)
    with pytest.raises(ValueError, match="mask='sharp' only"):
        sharpattn.SharpAttentionBlock(torch.nn.Conv2d(3, 4, 1), 4, mask="soft", detach_range=True)
