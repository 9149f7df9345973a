"""The NaN rule in the Triton kernels: a NaN in plane (n, c) makes that plane's lo and hi NaN
(as the reference's amin/amax), so every output of the plane is NaN - mask, F, TV and both
gradients, in every mode, on the single-block and the tiled path - and no other plane changes.
(tests/test_op_registration.py checks the rule on every backend; this checks the Triton paths.)"""

import pytest
import torch

from sharpattn import functional as F

pytestmark = pytest.mark.triton
pytest.importorskip("triton")

# One block per plane (float32), tiled planes (float64: more than 1024 positions; float32: more
# than 2048).
CASES = [(torch.float32, 4, 5), (torch.float64, 25, 44), (torch.float32, 3, 700)]


def _run(t, x, g, gtv, mode):
    t, x = t.clone().requires_grad_(), x.clone().requires_grad_()
    out, mask, tv = F.sharp_attention(t, x, tau=0.7, seed=5, offset=3, mode=mode,
                                      return_mask=True, return_tv=True, backend="triton")
    dt, dx = torch.autograd.grad((out, tv), (t, x), (g, gtv))
    return out.detach(), mask, tv.detach(), dt, dx


@pytest.mark.parametrize("mode", ["sample", "mean", "hard"])
@pytest.mark.parametrize("dtype, H, W", CASES, ids=["single", "tiled-f64", "tiled-f32"])
def test_nan_fills_its_plane_and_no_other(dtype, H, W, mode):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    t, x, g = (torch.randn(2, 2, H, W, generator=gen, dtype=dtype).to(device) for _ in range(3))
    gtv = torch.tensor([0.3, -0.2], dtype=dtype, device=device)
    bad = x.clone()
    bad[1, 0, H // 2, W - 1] = float("nan")
    clean = _run(t, x, g, gtv, mode)
    dirty = _run(t, bad, g, gtv, mode)
    for name, c, d in zip(("out", "mask", "tv", "grad_t", "grad_x"), clean, dirty):
        if name == "tv":  # per sample: sample 1 holds the NaN plane
            assert torch.isnan(d[1]) and torch.equal(d[0], c[0]), name
            continue
        assert torch.isnan(d[1, 0]).all(), name
        others = torch.ones(2, 2, dtype=torch.bool)
        others[1, 0] = False
        assert torch.isfinite(c).all(), name
        assert torch.equal(d[others], c[others]), name
