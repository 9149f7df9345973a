"""Inputs and comparisons shared by the operator tests."""

import torch

from sharpattn import reference as R

# Per output dtype: one unit in the last place of the output (the backends and the reference
# both compute in float32 and round once, so a rounding boundary can split them by one ulp),
# and for float32/float64 a few ulps of the accumulation dtype, since log/exp/sigmoid differ by
# an ulp or two between libm, CUDA and Triton.
VALUE_TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=2e-6, atol=2e-6),
    torch.float16: dict(rtol=2**-10, atol=1e-5),
    torch.bfloat16: dict(rtol=2**-7, atol=1e-5),
}


def feature_map(shape, dtype=torch.float32, device="cpu", *, relu=True, seed=0):
    """A test map; after a ReLU many elements tie at 0, the plane minimum."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    if relu:
        v = v.relu()
    return v.to(dtype).to(device)


def with_layout(v: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if layout == "contiguous":
        return v.contiguous()
    if layout == "channels_last":
        return v.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        # A strided view into a larger buffer: every second column of a wider map.
        wide = torch.zeros(v.shape[:-1] + (2 * v.shape[-1] + 1,), dtype=v.dtype, device=v.device)
        wide[..., 1::2] = v
        view = wide[..., 1::2]
        assert not view.is_contiguous()
        return view
    raise ValueError(layout)


def hard_mask_tolerant_close(got: torch.Tensor, expected: torch.Tensor, x: torch.Tensor,
                             *, seed: int, offset: int, eps: float):
    """Hard masks must agree except where the logit plus noise is within rounding of 0."""
    xd = x.double().cpu()
    z = R.mask_logit(xd, eps) + R.logistic_noise(x.shape, seed=seed, offset=offset,
                                                 dtype=torch.float64)
    differ = got.cpu() != expected.cpu()
    assert (z.abs()[differ] < 1e-4).all(), "hard mask differs away from the decision boundary"
    return differ


def assert_as_accurate_as_reference(got: torch.Tensor, ref: torch.Tensor, truth: torch.Tensor,
                                    ignore: torch.Tensor | None = None):
    """Gradients: the backend may be off the float64 truth by at most 4x the eager reference's
    own error in the same (n, c) plane, plus one ulp of the output dtype, plus a floor of 1e-6
    (1e-9 in float64) of the largest gradient for summation order. `ignore` marks elements
    not compared (hard-mask elements that flipped at the decision boundary).

    Why not a fixed tolerance: at the plane minimum a = x - lo + eps can be as small as eps, and
    the gradient there is a difference of terms of size |dL/dz| / eps. In float32 those cancel to
    a result whose absolute error can be 1e5 times an ulp of the inputs: the eager reference has
    the same error, and that error, measured, is the honest yardstick.
    """
    assert got.dtype == ref.dtype and got.shape == ref.shape
    ulp = 0.0 if got.dtype == torch.float64 else torch.finfo(got.dtype).eps
    floor = 1e-9 if got.dtype == torch.float64 else 1e-6
    got, ref, truth = got.cpu().double(), ref.cpu().double(), truth.cpu().double()
    if truth.numel() == 0:
        return
    scale = truth.abs().max().item() or 1.0
    ref_err = (ref - truth).abs()
    bound = 4 * ref_err.amax(dim=(-2, -1), keepdim=True) + ulp * truth.abs() + floor * scale
    excess = (got - truth).abs() - bound
    if ignore is not None:
        excess[ignore.cpu()] = 0
    assert (excess <= 0).all(), (
        f"gradient off the float64 truth by {(got - truth).abs().max().item():.3g} where the "
        f"reference's own error is {ref_err.max().item():.3g} (largest excess "
        f"{excess.max().item():.3g}, scale {scale:.3g})")
