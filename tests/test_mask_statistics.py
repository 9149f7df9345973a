"""The masks are the distributions the paper asks for: "hard" draws exact Bernoulli(p) samples
and "sample" (the Gumbel-Softmax relaxation) approaches them as the temperature falls."""

import math

import torch

from sharpattn import functional as F

EPS = 1e-6


SAMPLES = 8192  # draws per p value: 16 planes x 512 columns


def _plane_batch(device):
    """16 planes of 8 x 512 whose row r holds value v_r, so row r has p = p_r everywhere.

    Few planes with many positions: Triton's CPU interpreter runs one program per plane in
    Python, so the statistics come from positions, not from planes.
    """
    values = torch.tensor([0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.8, 1.0])
    p = (values - values.min() + EPS) / (values.max() - values.min() + 2 * EPS)
    t = values.view(1, 1, 8, 1).expand(16, 1, 8, 512).contiguous().to(device)
    return t, p.double()


def _row_means(mask):
    return mask.double().mean(dim=(0, 1, 3)).cpu()


def test_hard_mode_draws_bernoulli_p(backend_device):
    backend, device = backend_device
    t, p = _plane_batch(device)
    _, mask = F.sharp_attention(t, tau=1.0, seed=12345, mode="hard", backend=backend,
                                return_mask=True)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # Each row's frequency of ones over its independent draws: within 5 standard errors of p.
    sigma = (p * (1 - p) / SAMPLES).sqrt()
    assert ((_row_means(mask) - p).abs() <= 5 * sigma + 1e-12).all(), (_row_means(mask), p)


def test_sample_mode_sharpens_toward_bernoulli_as_tau_falls(backend_device):
    backend, device = backend_device
    t, p = _plane_batch(device)
    bias, softness = [], []
    for tau in (2.0, 1.0, 0.3, 0.05):
        _, mask = F.sharp_attention(t, tau=tau, seed=777, mode="sample", backend=backend,
                                    return_mask=True)
        bias.append((_row_means(mask) - p).abs().max().item())
        mask = mask.double()
        softness.append((mask * (1 - mask)).mean().item())  # 0 for a hard 0/1 mask
    assert all(a > b for a, b in zip(softness, softness[1:])), softness
    # At tau = 0.05 the relaxed mask is within sampling error of Bernoulli(p) in the mean and
    # nearly binary; at tau = 2 it is visibly biased toward 1/2.
    standard_error = math.sqrt(0.25 / SAMPLES)
    assert bias[-1] <= 5 * standard_error, bias
    assert softness[-1] < 0.02, softness
    assert bias[0] > 10 * standard_error, bias


def test_different_seeds_and_offsets_give_different_masks(backend_device):
    backend, device = backend_device
    t, _ = _plane_batch(device)
    t = t[:2, :, :, :8]
    a = F.sharp_attention(t, tau=0.5, seed=1, backend=backend)
    assert not torch.equal(a, F.sharp_attention(t, tau=0.5, seed=2, backend=backend))
    assert not torch.equal(a, F.sharp_attention(t, tau=0.5, seed=1, offset=1, backend=backend))
    assert torch.equal(a, F.sharp_attention(t, tau=0.5, seed=1, backend=backend))
