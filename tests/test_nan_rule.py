"""The NaN rule (README, "Specification notes") on every backend: a NaN anywhere in plane (n, c)
makes that plane's min and max NaN, as torch.amin/amax do, so the whole plane's outputs and input
gradients are NaN, and every other plane is exactly what a NaN-free run gives.

One call poisons three planes, with the NaN at the first, a middle and the last position: the
CPU's vector min/max used to keep a NaN only in the first position (min_ps/max_ps return their
second operand when either is NaN), and the last position of a 5 x 7 plane lies in the vector
tail of both AVX2 (8 lanes) and AVX-512 (16 lanes). Planes are independent, so one call tests
all three (a third of the Triton interpreter's time), and sample 2 stays clean for the TV.
"""

import pytest
import torch

from sharpattn import backends
from sharpattn import functional as F

from helpers import feature_map

HAS_GPU = torch.cuda.is_available()
SHAPE = (3, 2, 5, 7)
# poisoned plane (n, c) -> the NaN's (h, w): first, a middle and the last position
POISON = {(0, 1): (0, 0), (1, 0): (2, 3), (1, 1): (4, 6)}


def _cases():
    # (backend, device, forced CPU capability or None)
    yield "reference", "cpu", None
    for cap in ("default", "avx2", "avx512"):
        yield "cpu", "cpu", cap
    yield "triton", "cuda" if HAS_GPU else "cpu", None
    yield "cuda", "cuda", None
    yield "reference", "cuda", None


def _param(backend, device, cap):
    marks = [pytest.mark.triton] if backend == "triton" else []
    if device == "cuda":
        marks.append(pytest.mark.cuda)
    name = f"{backend}-{device}" + (f"-{cap}" if cap else "")
    return pytest.param((backend, device, cap), id=name, marks=marks)


@pytest.fixture(params=[_param(*c) for c in _cases()])
def backend_case(request, monkeypatch):
    backend, device, cap = request.param
    if device == "cuda" and not HAS_GPU:
        pytest.skip("no CUDA GPU on this machine")
    reason = backends.why_unavailable(backend, device)
    if reason is not None:
        pytest.fail(f"backend {backend!r} should run on {device} here but: {reason}")
    if cap is not None:
        # The kernels never pick a capability the CPU lacks; without it this case would only
        # repeat a lower one.
        have = torch.backends.cpu.get_cpu_capability().lower()
        rank = {"default": 0, "avx2": 1, "avx512": 2}
        if rank.get(have, 0) < rank[cap]:
            pytest.skip(f"this CPU runs {have}, not {cap}")
        monkeypatch.setenv("SHARPATTN_CPU_CAPABILITY", cap)
    return backend, device


def _run(t, x, backend, mode):
    """Forward outputs (out, mask, per-sample TV) and input gradients, all detached."""
    leaves = [v.clone().requires_grad_() for v in ([t] if x is None else [t, x])]
    out, mask, tv = F.sharp_attention(leaves[0], None if x is None else leaves[1], tau=0.7,
                                      seed=5, offset=3, mode=mode, backend=backend,
                                      return_mask=True, return_tv=True)
    g = feature_map(t.shape, relu=False, seed=3, device=t.device)
    g_tv = torch.linspace(0.5, 1.5, t.shape[0], device=t.device)
    grads = torch.autograd.grad((out * g).sum() + (tv * g_tv).sum(), leaves)
    return out.detach(), mask.detach(), tv.detach(), grads


@pytest.mark.parametrize("mode", ["sample", "mean", "hard"])
@pytest.mark.parametrize("separate_x", [False, True], ids=["x_is_t", "separate_x"])
def test_nan_poisons_exactly_its_plane(backend_case, mode, separate_x):
    backend, device = backend_case
    t = feature_map(SHAPE, device=device)
    x = feature_map(SHAPE, device=device, seed=9) if separate_x else None
    poisoned_t, poisoned_x = t.clone(), None if x is None else x.clone()
    # The NaN goes into the mask input: x, or t when t is its own mask input.
    for plane, position in POISON.items():
        (poisoned_t if x is None else poisoned_x)[plane + position] = float("nan")

    clean = _run(t, x, backend, mode)
    got = _run(poisoned_t, poisoned_x, backend, mode)

    other = torch.ones(SHAPE[:2], dtype=torch.bool, device=device)
    for plane in POISON:
        other[plane] = False
    # Planes are computed independently with the same noise: other planes agree bit for bit.
    for name, a, b in [("out", got[0], clean[0]), ("mask", got[1], clean[1])] + \
            [(f"grad {i}", ga, gb) for i, (ga, gb) in enumerate(zip(got[3], clean[3]))]:
        assert torch.equal(a[other], b[other]), f"{name}: a NaN changed another plane"
    assert torch.equal(got[2][2], clean[2][2]), "a NaN changed the TV of a clean sample"

    # Hard mode too: the reference's step + (soft - soft.detach()) is NaN where soft is.
    for plane, position in POISON.items():
        where = f"plane {plane}, NaN at {position}"
        assert got[1][plane].isnan().all(), f"mask, {where}: {got[1][plane]}"
        assert got[0][plane].isnan().all(), f"output, {where}: {got[0][plane]}"
        assert got[2][plane[0]].isnan(), f"tv, {where}"
        for i, grad in enumerate(got[3]):
            assert grad[plane].isnan().all(), f"grad {i}, {where}: {grad[plane]}"
