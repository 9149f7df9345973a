"""XQDA, KISSME and Euclidean (sharpattn.reid.metrics.learned) against direct float64 NumPy
evaluations of the published formulas, with every pair enumerated."""

import numpy as np
import pytest
import torch

from sharpattn.reid import KISSME, XQDA, Euclidean, evaluate_rank, metric_from_state_dict
from sharpattn.reid.metrics import compute_distance_matrix, metric_distances, re_ranking
from sharpattn.reid.metrics.pairs import sample_negative_pairs


def labelled(n_ids, n_cams, per_cell, dim, seed, spread=1.0):
    """Features with some identity structure: class centre + noise; every identity in every camera."""
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(n_ids), n_cams * per_cell)
    cams = np.tile(np.repeat(np.arange(n_cams), per_cell), n_ids)
    centres = spread * rng.normal(size=(n_ids, dim))
    x = centres[pids] + rng.normal(size=(len(pids), dim)) + 0.5 * rng.normal(size=(n_cams, dim))[cams]
    return x, pids, cams


def cross_camera_pairs(pids, cams):
    """Every unordered pair of images from different cameras, split into same / different identity."""
    pos, neg = [], []
    for i in range(len(pids)):
        for j in range(i + 1, len(pids)):
            if cams[i] != cams[j]:
                (pos if pids[i] == pids[j] else neg).append((i, j))
    return pos, neg


def two_view_pairs(pids, cams):
    """Liao's two views literally: every (camera-0 image, camera-1 image) pair."""
    gal, prob = np.flatnonzero(cams == 0), np.flatnonzero(cams == 1)
    pairs = [(i, j) for i in gal for j in prob]
    return [p for p in pairs if pids[p[0]] == pids[p[1]]], [p for p in pairs if pids[p[0]] != pids[p[1]]]


def scatter(x, pairs):
    s = np.zeros((x.shape[1], x.shape[1]))
    for i, j in pairs:
        s += np.outer(x[i] - x[j], x[i] - x[j])
    return s / len(pairs)


def xqda_reference(x, pids, cams, lam=1e-3, dims=None, pairs=cross_camera_pairs):
    pos, neg = pairs(pids, cams)
    s_i = scatter(x, pos) + lam * np.eye(x.shape[1])
    s_e = scatter(x, neg)
    evals, evecs = np.linalg.eig(np.linalg.inv(s_i) @ s_e)
    order = np.argsort(-evals.real)
    r = int((evals.real > 1).sum())
    w = evecs.real[:, order[:r if dims is None else min(dims, r)]]
    return w, np.linalg.inv(w.T @ s_i @ w) - np.linalg.inv(w.T @ s_e @ w)


def kissme_reference(x, pids, cams, pca_dim, lam, negatives):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    centred = xn - xn.mean(0)
    evals, evecs = np.linalg.eigh(centred.T @ centred)
    p = evecs[:, ::-1][:, :min(pca_dim, x.shape[1])]
    z = centred @ p
    pos, _ = cross_camera_pairs(pids, cams)
    m = np.linalg.inv(scatter(z, pos)) - lam * np.linalg.inv(scatter(z, list(zip(*negatives))))
    mu, v = np.linalg.eigh(m)
    mu[mu <= 1e-10] = 1e-6
    return p, (v * mu) @ v.T


def pairwise(q, g, proj, m, normalise=False):
    if normalise:
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
    out = np.empty((len(q), len(g)))
    for a in range(len(q)):
        for b in range(len(g)):
            t = (q[a] - g[b]) @ proj
            out[a, b] = t @ m @ t
    return out


# Both sides are float64; they differ in how the eigenvectors are found (LAPACK eig of
# inv(S_I) S_E vs a Cholesky-reduced eigh; numpy's PCA vs torch's), which on these small,
# well-conditioned problems agrees to ~1e-12 relative. 1e-8 leaves room and still catches any
# wrong pair, count or selection (those change distances by percents).
TOL = dict(rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("num_cams, pairs", [(2, two_view_pairs), (3, cross_camera_pairs)])
@pytest.mark.parametrize("dims", [None, 2])
def test_xqda_matches_the_formulas(num_cams, pairs, dims):
    x, pids, cams = labelled(8, num_cams, 3, 6, seed=num_cams)
    q, _, _ = labelled(4, 2, 2, 6, seed=10)
    g, _, _ = labelled(5, 2, 2, 6, seed=11)
    metric = XQDA(dims=dims).fit(x, pids, cams)
    w, m = xqda_reference(x, pids, cams, dims=dims, pairs=pairs)
    assert metric.info["dims_kept"] == w.shape[1] >= (1 if dims is None else 2)
    assert w.shape[1] < 6  # the eigenvalue > 1 selection really drops something here
    expected = pairwise(q, g, w, m)
    got = metric.distance(torch.from_numpy(q), torch.from_numpy(g))
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, **TOL)
    assert (expected > 0).all()


def test_xqda_with_more_dimensions_than_samples_uses_qr_and_the_same_metric():
    x, pids, cams = labelled(5, 2, 2, 30, seed=3)        # 20 samples in 30 dimensions
    q, _, _ = labelled(3, 2, 1, 30, seed=4)
    metric = XQDA(lam=1e-2).fit(x, pids, cams)
    assert metric.info["qr"] and metric.W.shape[0] == 30
    w, m = xqda_reference(x, pids, cams, lam=1e-2)        # in the full 30-dimensional space
    np.testing.assert_allclose(metric.distance(q, x).numpy(), pairwise(q, x, w, m), **TOL)


def test_kissme_matches_the_formulas():
    x, pids, cams = labelled(6, 3, 4, 10, seed=5, spread=0.5)
    q, _, _ = labelled(3, 2, 2, 10, seed=6)
    metric = KISSME(pca_dim=6, lam=1.0, seed=3).fit(torch.from_numpy(x), torch.from_numpy(pids), cams)
    neg_i, neg_j = metric.negative_pairs
    pos, _ = cross_camera_pairs(pids, cams)
    assert len(neg_i) == len(pos) == metric.info["num_positive_pairs"]
    assert (pids[neg_i] != pids[neg_j]).all() and (cams[neg_i] != cams[neg_j]).all()
    assert metric.info["eigenvalues_clipped"] > 0  # the projection onto PSD matrices is exercised
    p, m = kissme_reference(x, pids, cams, 6, 1.0, (neg_i, neg_j))
    np.testing.assert_allclose(metric.distance(q, x).numpy(), pairwise(q, x, p, m, normalise=True), **TOL)
    # the PCA dimension is capped at the feature dimension
    assert KISSME(pca_dim=200).fit(x, pids, cams).info["pca_dim"] == 10


def test_negative_pairs_are_seeded_uniform_and_valid():
    pids, cams = np.repeat(np.arange(6), 4), np.tile(np.arange(4), 6)
    a = sample_negative_pairs(pids, cams, 4000, seed=1)
    b = sample_negative_pairs(pids, cams, 4000, seed=1)
    c = sample_negative_pairs(pids, cams, 4000, seed=2)
    assert all(np.array_equal(u, v) for u, v in zip(a, b)) and not np.array_equal(a[0], c[0])
    i, j = a
    assert (pids[i] != pids[j]).all() and (cams[i] != cams[j]).all()
    # 24 * 15 valid ordered pairs, each expected 4000 / 360 = 11.1 times (standard deviation 3.3):
    # a uniform draw reaches every one and none 30 times; a draw that skipped some valid pairs
    # (e.g. only i < j) or favoured some would not
    valid = ((pids[:, None] != pids) & (cams[:, None] != cams)).ravel()
    counts = np.bincount(i * 24 + j, minlength=24 * 24)[valid]
    assert len(counts) == 360 and counts.min() >= 1 and counts.max() <= 30


@pytest.mark.parametrize("make", [lambda: XQDA(), lambda: KISSME(pca_dim=8, seed=1)], ids=["xqda", "kissme"])
def test_invariant_to_the_order_of_the_training_features(make):
    x, pids, cams = labelled(10, 3, 3, 12, seed=7)
    q, _, _ = labelled(4, 2, 2, 12, seed=8)
    perm = np.random.default_rng(0).permutation(len(pids))
    a = make().fit(x, pids, cams)
    b = make().fit(x[perm], pids[perm], cams[perm])
    # Only the summation order of the float64 covariances differs: ~1e-15 relative.
    np.testing.assert_allclose(a.distance(q, x).numpy(), b.distance(q, x).numpy(), rtol=1e-9, atol=1e-12)
    if isinstance(a, KISSME):  # the same negatives, named by the permuted indices
        pa = sorted(zip(*a.negative_pairs))
        pb = sorted((perm[i], perm[j]) for i, j in zip(*b.negative_pairs))
        assert pa == [tuple(p) for p in pb]


ID_DIMS, DIM, CAMS = 8, 32, 4


def camera_network(seed=100, offset=0.3, scale=(0.5, 1.0)):
    """Per camera: a fixed offset and a per-direction noise scale, outside the identity directions."""
    rng = np.random.default_rng(seed)
    off, sc = np.zeros((CAMS, DIM)), np.zeros((CAMS, DIM))
    off[:, ID_DIMS:] = offset * rng.normal(size=(CAMS, DIM - ID_DIMS))
    sc[:, ID_DIMS:] = rng.uniform(*scale, size=(CAMS, DIM - ID_DIMS))
    return off, sc


def nuisance_split(n_ids, seed, cameras, per_cam=3):
    """Identity lives in the first ``ID_DIMS`` directions (unit-variance class centres); the
    camera adds its offset and large, camera-shaped noise in the other directions; a little
    isotropic noise everywhere. Every identity is seen ``per_cam`` times by each camera."""
    rng = np.random.default_rng(seed)
    off, sc = cameras
    pids = np.repeat(np.arange(n_ids), CAMS * per_cam)
    camids = np.tile(np.repeat(np.arange(CAMS), per_cam), n_ids)
    centres = np.zeros((n_ids, DIM))
    centres[:, :ID_DIMS] = rng.normal(size=(n_ids, ID_DIMS))
    x = centres[pids] + off[camids] + sc[camids] * rng.normal(size=(len(pids), DIM)) + 0.3 * rng.normal(
        size=(len(pids), DIM))
    return x.astype(np.float32), pids, camids


def test_learned_metrics_beat_euclidean_when_cameras_add_nuisance():
    cams = camera_network()
    train = nuisance_split(100, seed=0, cameras=cams)
    fx, fp, fc = nuisance_split(100, seed=1, cameras=cams)
    fp = fp + 1000  # unseen test identities, same cameras
    is_query = np.zeros(len(fp), dtype=bool)
    is_query[::6] = True
    q, g = torch.from_numpy(fx[is_query]), torch.from_numpy(fx[~is_query])
    labels = fp[is_query], fp[~is_query], fc[is_query], fc[~is_query]
    maps = {}
    for metric in (Euclidean(), XQDA(), KISSME()):
        metric.fit(*train)
        maps[metric.name] = evaluate_rank(metric.distance(q, g), *labels)["mAP"]
    # the best one can do: Euclidean distance in the identity directions only
    oracle = evaluate_rank(compute_distance_matrix(q[:, :ID_DIMS], g[:, :ID_DIMS]), *labels)["mAP"]
    # Measured (these seeds): Euclidean 0.13, XQDA 0.92, KISSME 0.89, oracle 0.93; other seeds move
    # each by about 0.01. Demand a margin of 0.5 over Euclidean and to be within 0.1 of the oracle.
    for name in ("xqda", "kissme"):
        assert maps[name] > maps["euclidean"] + 0.5, maps
        assert maps[name] > oracle - 0.1, (maps, oracle)


@pytest.mark.parametrize("make", [Euclidean, lambda: XQDA(dims=3), lambda: KISSME(pca_dim=5, lam=0.5)],
                         ids=["euclidean", "xqda", "kissme"])
def test_state_dict_round_trip(make, tmp_path):
    x, pids, cams = labelled(8, 3, 3, 9, seed=12)
    q = torch.randn(5, 9)
    metric = make().fit(x, pids, cams)
    torch.save(metric.state_dict(), tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)  # plain values and tensors only
    loaded = metric_from_state_dict(state)
    assert type(loaded) is type(metric) and repr(loaded) == repr(metric)
    assert torch.equal(loaded.distance(q, x), metric.distance(q, x))
    again = make().load_state_dict(state)
    assert torch.equal(again.distance(q, x), metric.distance(q, x))
    other = XQDA() if not isinstance(metric, XQDA) else KISSME()
    with pytest.raises(ValueError, match="not"):
        other.load_state_dict(state)


@pytest.mark.parametrize("make", [lambda: XQDA(), lambda: KISSME(pca_dim=6)], ids=["xqda", "kissme"])
def test_transform_and_reranking_use_the_metric(make):
    x, pids, cams = labelled(8, 3, 3, 10, seed=13)
    q, _, _ = labelled(6, 2, 2, 10, seed=14)
    g, _, _ = labelled(10, 3, 2, 10, seed=15)
    q, g = torch.from_numpy(q).float(), torch.from_numpy(g).float()
    metric = make().fit(x, pids, cams)
    # squared Euclidean distances of the transformed features are the metric's distances
    # (float32 projections: agreement to float32 rounding of the larger distances)
    torch.testing.assert_close(compute_distance_matrix(metric.transform(q), metric.transform(g), "sqeuclidean"),
                               metric.distance(q, g), rtol=1e-4, atol=1e-4 * float(metric.distance(q, g).max()))
    reranked = metric_distances(metric, q, g, rerank=True, progress=False, k1=5, k2=3)
    torch.testing.assert_close(reranked, re_ranking(metric.transform(q), metric.transform(g), k1=5, k2=3,
                                                    progress=False))
    assert not torch.allclose(reranked, re_ranking(q, g, k1=5, k2=3, progress=False), atol=1e-3)
    torch.testing.assert_close(metric_distances(metric, q, g), metric.distance(q, g))


def test_euclidean_is_squared_euclidean():
    q, g = torch.randn(4, 7), torch.randn(6, 7)
    torch.testing.assert_close(Euclidean().distance(q, g), compute_distance_matrix(q, g, "sqeuclidean"))
    fitted = Euclidean().fit(torch.randn(3, 7))
    with pytest.raises(ValueError, match=r"\(n, 7\)"):
        fitted.distance(torch.randn(2, 5), g)


@pytest.mark.parametrize("cls", [XQDA, KISSME])
def test_degenerate_training_sets_are_refused(cls):
    x, pids, cams = labelled(6, 3, 2, 5, seed=16)
    with pytest.raises(ValueError, match="at least 2 identities"):
        cls().fit(x, np.zeros_like(pids), cams)
    with pytest.raises(ValueError, match="at least 2 cameras"):
        cls().fit(x, pids, np.zeros_like(cams))
    with pytest.raises(ValueError, match="no identity has images from two different cameras"):
        cls().fit(x, np.arange(len(pids)), cams)  # every image its own identity
    with pytest.raises(ValueError, match="at least 2 samples"):
        cls().fit(x[:1], pids[:1], cams[:1])
    with pytest.raises(ValueError, match="one entry per feature row"):
        cls().fit(x, pids[:-1], cams)
    with pytest.raises(TypeError, match="integers"):
        cls().fit(x, pids.astype(float), cams)
    with pytest.raises(ValueError, match="2-D"):
        cls().fit(x[0], pids, cams)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cls().fit(bad, pids, cams)
    with pytest.raises(RuntimeError, match="not fitted"):
        cls().distance(x, x)
    with pytest.raises(ValueError, match=r"\(n, 5\)"):
        cls(**({"pca_dim": 3} if cls is KISSME else {})).fit(x, pids, cams).distance(x[:, :4], x)


def test_errors_specific_to_each_metric():
    x, pids, cams = labelled(6, 3, 2, 5, seed=17)
    with pytest.raises(ValueError, match="features do not separate"):
        XQDA().fit(np.ones_like(x), pids, cams)  # constant features: S_E = 0
    with pytest.raises(ValueError, match="dims"):
        XQDA(dims=0)
    with pytest.raises(ValueError, match="lam"):
        XQDA(lam=-1)
    with pytest.raises(ValueError, match="pca_dim"):
        KISSME(pca_dim=0)
    big, bp, bc = labelled(3, 2, 2, 64, seed=18)  # 12 samples cannot give 64 PCA dimensions
    with pytest.raises(ValueError, match="needs at least 65 samples"):
        KISSME().fit(big, bp, bc)
    # 15 identities with one image in each of 2 cameras: 15 positive pairs cannot span 20 dimensions
    few = np.random.default_rng(0).normal(size=(30, 20))
    with pytest.raises(ValueError, match=r"S_S \(positive pairs\) is singular: 15 pairs"):
        KISSME(pca_dim=20).fit(few, np.repeat(np.arange(15), 2), np.tile([0, 1], 15))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("make", [lambda: XQDA(), lambda: KISSME(pca_dim=8)], ids=["xqda", "kissme"])
def test_fit_and_distances_on_the_gpu_match_the_cpu(make):
    x, pids, cams = labelled(10, 3, 3, 12, seed=19)
    q, _, _ = labelled(4, 2, 2, 12, seed=20)
    cpu = make().fit(x, pids, cams).distance(q, x)
    gpu_metric = make().fit(torch.from_numpy(x).cuda(), torch.from_numpy(pids).cuda(), cams)
    gpu = gpu_metric.distance(torch.from_numpy(q).cuda(), torch.from_numpy(x).cuda())
    assert gpu.is_cuda
    # float64 on both; cuSOLVER and LAPACK eigensolvers agree to ~1e-12 here
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), **TOL)
