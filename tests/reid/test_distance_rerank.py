import numpy as np
import pytest
import torch

from sharpattn.reid.metrics import compute_distance_matrix, evaluate_rank, re_ranking


def test_distances_against_direct_formulas():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(7, 5, generator=g, dtype=torch.float64)
    x = torch.randn(11, 5, generator=g, dtype=torch.float64)
    diff = q[:, None, :] - x[None, :, :]
    eu = diff.pow(2).sum(-1).sqrt()
    cos = 1 - (q[:, None, :] * x[None]).sum(-1) / (q.norm(dim=1)[:, None] * x.norm(dim=1)[None])
    # tiny blocks force one row per block
    torch.testing.assert_close(compute_distance_matrix(q, x, block_bytes=1), eu.float())
    torch.testing.assert_close(compute_distance_matrix(q, x, "sqeuclidean"), eu.pow(2).float())
    torch.testing.assert_close(compute_distance_matrix(q, x, "cosine"), cos.float())
    d = compute_distance_matrix(q.half(), x.half())
    assert d.dtype == torch.float32 and d.shape == (7, 11)
    out = torch.empty(7, 11)
    assert compute_distance_matrix(q, x, out=out) is out
    with pytest.raises(ValueError, match="metric"):
        compute_distance_matrix(q, x, "manhattan")
    with pytest.raises(ValueError, match="same d"):
        compute_distance_matrix(q, x[:, :3])


def dense_re_ranking(qf, gf, k1, k2, lam):
    """The published algorithm written out on the full (N, N) matrix, row by row."""
    x = np.concatenate([qf, gf]).astype(np.float64)
    n, nq = len(x), len(qf)
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    dist = dist / dist.max(1, keepdims=True)
    order = np.argsort(dist, axis=1, kind="stable")

    def reciprocal(i, k):
        fwd = order[i, :k + 1]
        return np.array([j for j in fwd if i in order[j, :k + 1]])

    V = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r.tolist())
        for c in r:
            rc = reciprocal(c, int(round(k1 / 2)))
            if len(set(rc.tolist()) & set(r.tolist())) > 2 / 3 * len(rc):
                expanded |= set(rc.tolist())
        idx = np.array(sorted(expanded))
        w = np.exp(-dist[i, idx])
        V[i, idx] = w / w.sum()
    if k2 > 1:
        V = np.stack([V[order[i, :k2]].mean(0) for i in range(n)])
    jac = np.zeros((nq, n))
    for i in range(nq):
        s = np.minimum(V[i][None, :], V).sum(1)
        jac[i] = 1 - s / (2 - s)
    final = (1 - lam) * jac + lam * dist[:nq]
    return final[:, nq:]


@pytest.mark.parametrize("k1, k2, lam, block_rows", [(6, 3, 0.3, 4), (5, 1, 0.0, 1000), (4, 5, 1.0, 7)])
def test_re_ranking_matches_the_full_matrix_computation(k1, k2, lam, block_rows):
    rng = np.random.default_rng(k1)
    # clustered features so k-reciprocal sets are non-trivial
    centres = rng.normal(size=(6, 8))
    qf = centres[rng.integers(0, 6, 14)] + 0.6 * rng.normal(size=(14, 8))
    gf = centres[rng.integers(0, 6, 37)] + 0.6 * rng.normal(size=(37, 8))
    got = re_ranking(torch.tensor(qf, dtype=torch.float32), torch.tensor(gf, dtype=torch.float32),
                     k1=k1, k2=k2, lambda_value=lam, block_rows=block_rows, progress=False)
    expect = dense_re_ranking(qf.astype(np.float32), gf.astype(np.float32), k1, k2, lam)
    assert got.shape == (14, 37) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expect, rtol=0, atol=2e-5)


def test_re_ranking_helps_on_clustered_data():
    # Sanity of use, not exact numbers: the re-ranked distances must not hurt mAP much on
    # well-clustered features, and the call works end to end with evaluate_rank.
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16)) * 2
    qp, gp = np.arange(20), np.repeat(np.arange(20), 6)
    qf = torch.tensor(centres[qp] + rng.normal(size=(20, 16)), dtype=torch.float32)
    gf = torch.tensor(centres[gp] + rng.normal(size=(120, 16)), dtype=torch.float32)
    base = evaluate_rank(compute_distance_matrix(qf, gf), qp, gp, np.zeros(20, int), np.ones(120, int))
    rr = evaluate_rank(re_ranking(qf, gf, progress=False), qp, gp, np.zeros(20, int), np.ones(120, int))
    assert rr["mAP"] >= base["mAP"] - 0.02


def test_re_ranking_bad_arguments():
    with pytest.raises(ValueError, match="k2"):
        re_ranking(torch.zeros(3, 2), torch.zeros(30, 2), k1=4, k2=6)
    with pytest.raises(ValueError, match="more than 20 images"):
        re_ranking(torch.zeros(3, 2), torch.zeros(5, 2))
