"""The portable noise of docs/spec.md section 1: Philox4x32-10, its counter layout, u and L."""

import math

import pytest
import torch

from sharpattn import functional as F
from sharpattn import reference as R


def test_philox_known_answer():
    # Random123's published known answer for counter 0 under key 0.
    words = R.philox4x32_10(torch.tensor([0]), 0)
    assert [int(w) for w in words] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def _philox_python(counter: int, key: int) -> list[int]:
    """Philox4x32-10 written with Python's unbounded ints: independent of the tensor version."""
    mask = 0xFFFFFFFF
    c = [counter & mask, counter >> 32 & mask, 0, 0]
    k = [key & mask, key >> 32 & mask]
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & mask, (p0 >> 32) ^ c[3] ^ k[1], p0 & mask]
        k = [(k[0] + 0x9E3779B9) & mask, (k[1] + 0xBB67AE85) & mask]
    return c


@pytest.mark.parametrize("counter,key", [(0, 0), (1, 0), (2**32 + 5, 7), (2**64 - 1, 2**64 - 1),
                                         (123456789012345, 2**63 + 99)])
def test_tensor_philox_matches_python_ints(counter, key):
    signed = counter - 2**64 if counter >= 2**63 else counter
    words = [int(w) for w in R.philox4x32_10(torch.tensor([signed]), key)]
    assert words == _philox_python(counter, key)


def test_counter_layout():
    # Element (n, c, h, w) uses word j mod 4 of counter offset + p*G + j//4, p = n*C + c.
    shape, seed, offset = (2, 3, 3, 5), 2**40 + 17, 1000
    words = R.philox_words(shape, seed=seed, offset=offset)
    N, C, H, W = shape
    groups = math.ceil(H * W / 4)
    for n, c, h, w in [(0, 0, 0, 0), (0, 0, 0, 3), (0, 0, 0, 4), (1, 2, 2, 4), (1, 0, 1, 1)]:
        j, p = h * W + w, n * C + c
        expected = _philox_python(offset + p * groups + j // 4, seed)[j % 4]
        assert int(words[n, c, h, w]) == expected


def test_uniform_formula_and_range():
    words = R.philox_words((4, 1000), seed=3)
    u = R.philox_uniform((4, 1000), seed=3, dtype=torch.float64)
    assert torch.equal(u, ((words >> 8).double() + 0.5) * 2.0**-24)
    assert 0 < u.min() and u.max() < 1


def test_extreme_words_give_finite_noise():
    # r = 0 and r = 2^32 - 1 are the words closest to 0 and 1: the noise must stay finite in
    # float32 even though u itself rounds to 1.0 there.
    words = torch.tensor([0, 0xFF, 0xFFFFFFFF, 0xFFFFFF00])
    odd, odd_complement = R._odd_numerators(words)
    assert odd.tolist() == [1, 1, 2**25 - 1, 2**25 - 1]
    assert (odd + odd_complement == 2**25).all()
    for dtype in (torch.float32, torch.float64):
        noise = torch.log(odd.to(dtype) * 2.0**-25) - torch.log(odd_complement.to(dtype) * 2.0**-25)
        assert torch.isfinite(noise).all()
        assert noise[0] == -noise[2]  # symmetric: L(r) = -L(~r)


def test_offset_continues_the_stream():
    # One call consumes N*C*ceil(HW/4) counters: a second call starting there continues the first.
    shape = (2, 3, 5, 7)
    groups = 2 * 3 * math.ceil(35 / 4)
    both = R.philox_uniform((4, 3, 5, 7), seed=9)
    assert torch.equal(both[2:], R.philox_uniform(shape, seed=9, offset=groups))


def test_uniforms_look_uniform():
    u = R.philox_uniform((64, 4096), seed=1, dtype=torch.float64).flatten()
    n = u.numel()
    # Mean and variance of U(0,1) within 5 standard errors; histogram within 5 sigma per bin.
    assert abs(u.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(u.var().item() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)
    counts = torch.histc(u, bins=16, min=0, max=1)
    expected = n / 16
    assert (counts - expected).abs().max() < 5 * math.sqrt(expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 1, 1), (3, 17), (10,), (0, 4, 2, 2)])
def test_uniforms_bit_identical_across_backends(backend_device, dtype, shape):
    backend, device = backend_device
    seed, offset = 2**64 - 3, 2**40 + 1
    expected = R.philox_uniform(shape, seed=seed, offset=offset, dtype=dtype)
    got = F.philox_uniform(shape, seed=seed, offset=offset, dtype=dtype, device=device,
                           backend=backend)
    assert got.shape == torch.Size(shape) and got.dtype == dtype
    assert torch.equal(got.cpu(), expected)


def test_philox_uniform_bad_arguments():
    with pytest.raises(ValueError, match="seed"):
        F.philox_uniform((2, 2), seed=-1)
    with pytest.raises(ValueError, match="seed"):
        F.philox_uniform((2, 2), seed=2**64)
    with pytest.raises(ValueError, match="offset"):
        F.philox_uniform((2, 2), seed=0, offset=-5)
    with pytest.raises(TypeError, match="seed"):
        F.philox_uniform((2, 2), seed=1.5)
    with pytest.raises(TypeError, match="float32 or float64"):
        F.philox_uniform((2, 2), seed=0, dtype=torch.float16)
