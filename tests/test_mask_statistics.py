"""The masks are the distributions the paper asks for: "hard" draws exact Bernoulli(p) samples
and "sample" (the Gumbel-Softmax relaxation) approaches them as the temperature falls."""

import math

import torch

from sharpattn import functional as F

EPS = 1e-6


def _plane_batch(planes: int, device):
    """`planes` copies of one 2 x 4 plane whose p values are spread over (0, 1)."""
    values = torch.tensor([[0.0, 0.1, 0.25, 0.4], [0.5, 0.6, 0.8, 1.0]])
    p = (values - values.min() + EPS) / (values.max() - values.min() + 2 * EPS)
    t = values.expand(planes, 1, 2, 4).contiguous().to(device)
    return t, p


def _mean_mask(backend, device, t, tau, mode, seed):
    _, mask = F.sharp_attention(t, tau=tau, seed=seed, mode=mode, backend=backend,
                                return_mask=True)
    return mask.double().mean(dim=(0, 1)).cpu()


def test_hard_mode_draws_bernoulli_p(backend_device):
    backend, device = backend_device
    planes = 4096
    t, p = _plane_batch(planes, device)
    _, mask = F.sharp_attention(t, tau=1.0, seed=12345, mode="hard", backend=backend,
                                return_mask=True)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    freq = mask.double().mean(dim=(0, 1)).cpu()
    # Each position's frequency over independent planes: within 5 standard errors of p.
    sigma = (p * (1 - p) / planes).sqrt().double()
    assert ((freq - p.double()).abs() <= 5 * sigma + 1e-12).all(), (freq, p)


def test_sample_mode_sharpens_toward_bernoulli_as_tau_falls(backend_device):
    backend, device = backend_device
    planes = 4096
    t, p = _plane_batch(planes, device)
    bias, softness = [], []
    for tau in (2.0, 1.0, 0.3, 0.05):
        _, mask = F.sharp_attention(t, tau=tau, seed=777, mode="sample", backend=backend,
                                    return_mask=True)
        mask = mask.double().cpu()
        bias.append((mask.mean(dim=(0, 1)) - p.double()).abs().max().item())
        softness.append((mask * (1 - mask)).mean().item())  # 0 for a hard 0/1 mask
    assert all(a > b for a, b in zip(softness, softness[1:])), softness
    # At tau = 0.05 the relaxed mask is within sampling error of Bernoulli(p) in the mean and
    # nearly binary; at tau = 2 it is visibly biased toward 1/2.
    assert bias[-1] <= 5 * math.sqrt(0.25 / planes)
    assert softness[-1] < 0.02
    assert bias[0] > 10 * math.sqrt(0.25 / planes)


def test_different_seeds_and_offsets_give_different_masks(backend_device):
    backend, device = backend_device
    t, _ = _plane_batch(16, device)
    a = F.sharp_attention(t, tau=0.5, seed=1, backend=backend)
    assert not torch.equal(a, F.sharp_attention(t, tau=0.5, seed=2, backend=backend))
    assert not torch.equal(a, F.sharp_attention(t, tau=0.5, seed=1, offset=1, backend=backend))
    assert torch.equal(a, F.sharp_attention(t, tau=0.5, seed=1, backend=backend))
