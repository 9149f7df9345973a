"""grid_occlusion and grid_occlusion_pool (docs/spec.md section 4) on every backend against
sharpattn.reference: values, gradients, layouts, dtypes, the pooled form against the
materialised one, the registered ops (opcheck, torch.compile) and bad arguments."""

import pytest
import torch

from sharpattn.ops import grid_occlusion as G
from sharpattn import backends
from sharpattn import reference as R

from helpers import feature_map, with_layout

# (shape, grid): odd sizes with uneven cells, 1-row / 1-column maps, the whole map as one cell,
# one cell per position, and more cells (272) than the Triton pool kernel reduces in one pass.
CASES = [((2, 3, 7, 5), (4, 4)), ((1, 2, 1, 6), (1, 3)), ((2, 2, 6, 1), (3, 1)),
         ((2, 3, 4, 4), (1, 1)), ((1, 2, 5, 7), (2, 3)), ((1, 2, 3, 4), (3, 4)),
         ((1, 1, 17, 16), (17, 16))]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _ids(case):
    (shape, grid) = case
    return "x".join(map(str, shape)) + "-grid" + "x".join(map(str, grid))


def _acc_eps(dtype):
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


def _assert_within(got, expected, bound):
    got, expected = got.cpu().double(), expected.cpu().double()
    err = (got - expected).abs()
    assert got.shape == expected.shape
    assert (err <= bound).all(), f"off by {err.max().item():.3g}, allowed {bound.min().item():.3g}"


def _sum_bound(expected, terms_abs_sum, n_terms, dtype):
    """Two sums of n_terms terms in the accumulation dtype, each rounded once to dtype: each is
    within n_terms * eps_acc * sum|terms| of the exact value, and the roundings of two nearby
    values differ by at most one ulp of dtype."""
    ulp = torch.finfo(dtype).eps
    return (2 * n_terms * _acc_eps(dtype) * terms_abs_sum.cpu().double()
            + ulp * expected.cpu().double().abs() + 1e-300)


def _grads(fn, x, grad, **kw):
    x = x.detach().clone().requires_grad_()
    out = fn(x, **kw)
    (dx,) = torch.autograd.grad(out, x, grad)
    return out.detach(), dx


def _compare(backend, device, shape, grid, dtype=torch.float32, layout="contiguous"):
    x = with_layout(feature_map(shape, dtype, device, relu=False, seed=1), layout)
    N, C, H, W = shape
    Gn = grid[0] * grid[1]
    g_occ = feature_map((N, Gn, C, H, W), dtype, device, relu=False, seed=2)
    g_pool = feature_map((N, Gn, C), dtype, device, relu=False, seed=3)
    xr, g_occ_r, g_pool_r = x.cpu(), g_occ.cpu(), g_pool.cpu()

    # The materialised copies are copies or zeros: exact on every backend.
    out, dx = _grads(G.grid_occlusion, x, g_occ, grid=grid, backend=backend)
    ref, ref_dx = _grads(R.grid_occlusion, xr, g_occ_r, grid=grid)
    assert out.dtype == dtype and out.device == x.device and out.shape == (N, Gn, C, H, W)
    assert torch.equal(out.cpu(), ref)
    assert dx.dtype == dtype and dx.shape == x.shape
    _assert_within(dx, ref_dx, _sum_bound(ref_dx, g_occ_r.double().abs().sum(1), Gn, dtype))

    pooled, pdx = _grads(G.grid_occlusion_pool, x, g_pool, grid=grid, backend=backend)
    ref_pooled, ref_pdx = _grads(R.grid_occlusion_pool, xr, g_pool_r, grid=grid)
    assert pooled.dtype == dtype and pooled.shape == (N, Gn, C)
    # The reference sums H*W terms per mean, the kernels sum in float64.
    plane_abs = xr.double().abs().sum((-2, -1)).unsqueeze(1)  # (N, 1, C)
    _assert_within(pooled, ref_pooled, _sum_bound(ref_pooled, plane_abs / (H * W), H * W, dtype))
    grad_abs = g_pool_r.double().abs().sum(1)[..., None, None] / (H * W)  # (N, C, 1, 1)
    _assert_within(pdx, ref_pdx, _sum_bound(ref_pdx, grad_abs, Gn, dtype))
    if backend != "reference" and layout == "channels_last":
        assert pdx.is_contiguous(memory_format=torch.channels_last)  # dx is laid out like x


def test_cell_partition_by_hand():
    # 7 rows in 4 parts and 5 columns in 4 parts: floor(i*size/parts) edges.
    assert R.grid_cells(7, 4) == [(0, 1), (1, 3), (3, 5), (5, 7)]
    assert R.grid_cells(5, 4) == [(0, 1), (1, 2), (2, 3), (3, 5)]
    keep = R.grid_keep_masks(7, 5, (4, 4))
    assert keep.shape == (16, 7, 5)
    assert torch.equal((1 - keep).sum(0), torch.ones(7, 5))  # every position in exactly one cell
    k = 1 * 4 + 3  # cell (a=1, b=3): rows [1, 3), columns [3, 5)
    hole = torch.zeros(7, 5)
    hole[1:3, 3:5] = 1
    assert torch.equal(1 - keep[k], hole)
    for H, W, grid in [(1, 6, (1, 3)), (6, 1, (3, 1)), (13, 11, (4, 4)), (5, 7, (5, 7)),
                       (9, 9, (2, 3))]:
        assert torch.equal((1 - R.grid_keep_masks(H, W, grid)).sum(0), torch.ones(H, W))


def test_cells_match_spec(backend_device):
    # On ones, the zeros of copy k are exactly cell k, and its pooled mean is 1 - |cell k|/HW.
    backend, device = backend_device
    for shape, grid in CASES:
        x = torch.ones(shape, device=device)
        H, W = shape[2:]
        keep = R.grid_keep_masks(H, W, grid)
        out = G.grid_occlusion(x, grid, backend=backend).cpu()
        assert torch.equal(out, keep[None, :, None].expand(out.shape))
        pooled = G.grid_occlusion_pool(x.double(), grid, backend=backend).cpu()
        expected = keep.double().mean((-2, -1))[None, :, None].expand(pooled.shape)
        torch.testing.assert_close(pooled, expected, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_matches_reference(backend_device, case):
    backend, device = backend_device
    _compare(backend, device, *case)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_matches_reference_dtypes(backend_device, dtype):
    backend, device = backend_device
    _compare(backend, device, (2, 3, 7, 5), (4, 4), dtype)


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_matches_reference_layouts(backend_device, layout):
    backend, device = backend_device
    _compare(backend, device, (2, 3, 7, 5), (4, 4), layout=layout)
    _compare(backend, device, (2, 3, 7, 5), (2, 3), torch.float16, layout=layout)


def test_expanded_gradients(backend_device):
    # out.sum().backward() hands the backward a grad with all strides 0.
    backend, device = backend_device
    x = feature_map((2, 3, 7, 5), device=device, relu=False).requires_grad_()
    G.grid_occlusion(x, (4, 4), backend=backend).sum().backward()
    assert torch.equal(x.grad.cpu(), torch.full((2, 3, 7, 5), 15.0))  # kept by 15 of 16 copies
    x.grad = None
    G.grid_occlusion_pool(x, (4, 4), backend=backend).sum().backward()
    keep = R.grid_keep_masks(7, 5, (4, 4)).sum(0) / 35
    torch.testing.assert_close(x.grad.cpu(), keep.expand(2, 3, 7, 5))


@pytest.mark.parametrize("shape", [(0, 3, 7, 5), (2, 0, 7, 5)])
def test_empty_batch(backend_device, shape):
    backend, device = backend_device
    x = torch.zeros(shape, device=device, requires_grad=True)
    out = G.grid_occlusion(x, (4, 4), backend=backend)
    assert out.shape == (shape[0], 16, shape[1], 7, 5)
    pooled = G.grid_occlusion_pool(x, (4, 4), backend=backend)
    assert pooled.shape == (shape[0], 16, shape[1])
    (out.sum() + pooled.sum()).backward()
    assert x.grad.shape == shape


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_pool_equals_materialised_mean(backend_device, grid):
    # The pooled op against the mean of the materialised copies, both from the same backend.
    backend, device = backend_device
    x = feature_map((2, 3, 13, 11), device=device, relu=False, seed=6)
    HW = 13 * 11
    pooled = G.grid_occlusion_pool(x, grid, backend=backend).cpu().double()
    copies = G.grid_occlusion(x, grid, backend=backend)
    # The float64 mean of the float32 copies is exact to ~HW * 2^-53; the pooled value is that
    # mean rounded once to float32: within one float32 ulp.
    exact = copies.double().mean((-2, -1)).cpu()
    torch.testing.assert_close(pooled, exact, rtol=torch.finfo(torch.float32).eps, atol=1e-12)
    # What a user gets from .mean() in float32: a float32 sum of H*W terms is within
    # H*W * eps * sum|x| of the exact sum (the worst case of recursive summation; pairwise
    # summation does better), so its mean is within H*W * eps * mean|x| of the exact mean.
    float32_mean = copies.mean((-2, -1)).cpu().double()
    bound = HW * torch.finfo(torch.float32).eps * x.cpu().double().abs().mean((-2, -1))
    assert ((float32_mean - pooled).abs() <= bound[:, None, :] + 1e-30).all()


def test_gradcheck_float64(backend_device):
    # Both ops are linear, so their gradients of every order exist: gradcheck the first and
    # second (through the backward ops' own autograd) derivatives.
    backend, device = backend_device
    x = feature_map((1, 2, 5, 4), torch.float64, device, relu=False, seed=7).requires_grad_()
    for fn in (G.grid_occlusion, G.grid_occlusion_pool):
        f = lambda x, fn=fn: fn(x, (2, 3), backend=backend)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x,), fast_mode=True)
        assert torch.autograd.gradgradcheck(f, (x,), fast_mode=True)


def _op_samples(device):
    for layout, shape, grid in [("contiguous", (2, 3, 7, 5), (4, 4)),
                                ("channels_last", (2, 3, 7, 5), (2, 3)),
                                ("sliced", (1, 2, 1, 3), (1, 3))]:
        x = with_layout(feature_map(shape, device=device, relu=False), layout)
        yield x.requires_grad_(), grid


def test_opcheck(backend_device):
    backend, device = backend_device
    if backend == "reference":
        pytest.skip("the reference is eager PyTorch, not a registered op")
    ops = torch.ops.sharpattn
    prefix = "triton_" if backend == "triton" else ""
    occ, occ_bwd = getattr(ops, prefix + "grid_occlusion"), getattr(ops, prefix + "grid_occlusion_backward")
    pool, pool_bwd = (getattr(ops, prefix + "grid_occlusion_pool"),
                      getattr(ops, prefix + "grid_occlusion_pool_backward"))
    for x, (gh, gw) in _op_samples(device):
        N, C, H, W = x.shape
        g = torch.randn(N, gh * gw, C, H, W, device=device).transpose(3, 4).contiguous() \
            .transpose(3, 4).requires_grad_()  # a strided grad
        gp = torch.randn(N, gh * gw, C, device=device, requires_grad=True)
        torch.library.opcheck(occ, (x, gh, gw))
        torch.library.opcheck(occ_bwd, (g, gh, gw))
        torch.library.opcheck(pool, (x, gh, gw))
        torch.library.opcheck(pool_bwd, (gp, x.detach(), gh, gw))


def test_torch_compile_fullgraph(backend_device):
    backend, device = backend_device
    x = feature_map((2, 3, 7, 5), device=device, relu=False)
    w = torch.randn(3, device=device)

    def head(x):
        # The AAA-Net use: a GAP + linear score per occluded copy, and the copies themselves.
        scores = G.grid_occlusion_pool(x, 4, backend=backend) @ w
        return scores, G.grid_occlusion(x, (2, 3), backend=backend).sum(dim=(2, 3))

    # Inductor on the CPU adds a C++ compile per test and only calls the ops as extern kernels;
    # aot_eager exercises the same fake kernels and autograd registrations.
    compiled = torch.compile(head, fullgraph=True,
                             backend="inductor" if device == "cuda" else "aot_eager")
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, got = head(xe), compiled(xc)
    for e, c in zip(expected, got):
        torch.testing.assert_close(c, e)
    loss_e = expected[0].sum() + expected[1].square().sum()
    loss_c = got[0].sum() + got[1].square().sum()
    torch.testing.assert_close(torch.autograd.grad(loss_c, xc)[0],
                               torch.autograd.grad(loss_e, xe)[0])


def test_nan_stays_in_its_plane(backend_device):
    backend, device = backend_device
    x = feature_map((2, 3, 7, 5), device=device, relu=False)
    poisoned = x.clone()
    poisoned[1, 2, 3, 1] = float("nan")
    other = torch.ones(2, 3, dtype=torch.bool)
    other[1, 2] = False
    clean = G.grid_occlusion_pool(x, (4, 4), backend=backend).cpu()
    got = G.grid_occlusion_pool(poisoned, (4, 4), backend=backend).cpu()
    assert torch.equal(got.permute(0, 2, 1)[other], clean.permute(0, 2, 1)[other])
    copies = G.grid_occlusion(poisoned, (4, 4), backend=backend).cpu()
    assert torch.equal(copies.transpose(1, 2)[other],
                       G.grid_occlusion(x, (4, 4), backend=backend).cpu().transpose(1, 2)[other])


def test_64bit_element_offsets(backend_device):
    # A view whose second sample starts past 2^31 elements of its storage: 64-bit indexing.
    # torch.empty does not touch the 4 GiB it reserves, so this costs almost no memory.
    backend, device = backend_device
    if backend == "triton" and device == "cpu":
        pytest.skip("Triton's interpreter copies the whole 4 GiB storage; runs on a GPU instead")
    far = 2**31 + 7
    storage = torch.empty(far + 64, dtype=torch.float16, device=device)
    x = storage.as_strided((2, 2, 3, 4), (far, 12, 4, 1))
    x.copy_(feature_map((2, 2, 3, 4), torch.float16, device, seed=4))
    for fn in (G.grid_occlusion, G.grid_occlusion_pool):
        got, expected = fn(x, (2, 2), backend=backend), fn(x.contiguous(), (2, 2), backend="reference")
        torch.testing.assert_close(got.cpu(), expected.cpu(), rtol=2**-10, atol=1e-5)


X = torch.rand(2, 3, 7, 5)


@pytest.mark.parametrize("fn", [G.grid_occlusion, G.grid_occlusion_pool],
                         ids=["grid_occlusion", "grid_occlusion_pool"])
@pytest.mark.parametrize("x,grid,error,match", [
    (X, (8, 4), ValueError, r"grid \(8, 4\) is larger than the feature map \(H, W\) = \(7, 5\)"),
    (X, (4, 6), ValueError, r"larger than the feature map"),
    (X, 8, ValueError, r"grid \(8, 8\) is larger"),
    (X, (0, 4), ValueError, "gh >= 1 and gw >= 1"),
    (X, (4, -1), ValueError, "gh >= 1 and gw >= 1"),
    (X, 0, ValueError, "gh >= 1 and gw >= 1"),
    (X, (4.0, 4), TypeError, "pair of ints"),
    (X, (4, 4, 4), TypeError, "pair of ints"),
    (X, (True, 2), TypeError, "pair of ints"),
    (X, "4x4", TypeError, "pair of ints"),
    (X[0], (4, 4), ValueError, "4-D"),
    (X[None], (4, 4), ValueError, "4-D"),
    (X.long(), (4, 4), TypeError, "float16, bfloat16, float32 or float64"),
    (X.to(torch.complex64), (4, 4), TypeError, "float16, bfloat16, float32 or float64"),
    ([1.0], (4, 4), TypeError, "torch.Tensor"),
])
def test_bad_arguments(fn, x, grid, error, match):
    with pytest.raises(error, match=match):
        fn(x, grid)


def test_compiled_ops_check_arguments_too():
    # Direct torch.ops / launcher calls bypass the Python checks; the kernels still refuse.
    from sharpattn.kernels import grid_occlusion as K

    checks = []
    if "cpu" in backends.available("cpu"):
        ops = torch.ops.sharpattn
        checks += [(RuntimeError, lambda: ops.grid_occlusion(X, 8, 4)),
                   (RuntimeError, lambda: ops.grid_occlusion_pool(X, 0, 4)),
                   (RuntimeError, lambda: ops.grid_occlusion(X.long(), 2, 2)),
                   (RuntimeError, lambda: ops.grid_occlusion_backward(torch.rand(2, 15, 3, 7, 5), 4, 4)),
                   (RuntimeError, lambda: ops.grid_occlusion_pool_backward(torch.rand(2, 16, 2), X, 4, 4))]
    checks += [(ValueError, lambda: K.grid_occlusion(X, 8, 4)),
               (ValueError, lambda: K.grid_occlusion_pool(X, 0, 4)),
               (TypeError, lambda: K.grid_occlusion(X.long(), 2, 2)),
               (ValueError, lambda: K.grid_occlusion_backward(torch.rand(2, 15, 3, 7, 5), 4, 4)),
               (ValueError, lambda: K.grid_occlusion_pool_backward(torch.rand(2, 16, 2), X, 4, 4))]
    for error, call in checks:
        with pytest.raises(error, match="sharpattn"):
            call()


@pytest.mark.parametrize("pooled", [False, True])
def test_grid_occlusion_module_and_public_api(pooled):
    import sharpattn
    from sharpattn import functional as F

    x = torch.randn(2, 3, 7, 5)
    module = sharpattn.GridOcclusion(grid=4, pooled=pooled)
    expected = (R.grid_occlusion_pool if pooled else R.grid_occlusion)(x, (4, 4))
    torch.testing.assert_close(module(x), expected)
    assert F.grid_occlusion is G.grid_occlusion and F.grid_occlusion_pool is G.grid_occlusion_pool
    assert "grid=(4, 4)" in repr(module)
