import math

import numpy as np
import pytest
import torch

from sharpattn.reid.metrics import evaluate_rank
from sharpattn.reid.metrics import rank as rank_module


def brute_force(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, ap_mode):
    """Direct per-query computation: build each ranked list explicitly and walk it."""
    cmcs, aps, inps = [], [], []
    for i in range(len(q_pids)):
        items = []
        for j in range(len(g_pids)):
            if g_pids[j] == -1:
                continue
            if g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i]:
                continue
            hit = g_pids[j] == q_pids[i]
            # Ties: the wrong match first (hit=False sorts before hit=True).
            items.append((distmat[i][j], hit))
        items.sort()
        hits = [h for _, h in items]
        if not any(hits):
            continue
        first = hits.index(True)
        cmcs.append([1.0 if k >= first else 0.0 for k in range(max_rank)])
        n, prec_sum, prev_prec = 0, 0.0, 1.0
        for pos, h in enumerate(hits):
            if h:
                n += 1
                p = n / (pos + 1)
                prec_sum += p if ap_mode == "standard" else (p + prev_prec) / 2
            prev_prec = n / (pos + 1)
        aps.append(prec_sum / n)
        last = max(k for k, h in enumerate(hits) if h)
        inps.append(n / (last + 1))
    return np.mean(cmcs, axis=0), np.mean(aps), np.mean(inps), len(aps)


def test_hand_built_case_both_ap_modes():
    # One query (pid 1, camera 0). Gallery, by distance:
    #   0.05 pid -1        junk everywhere      -> removed
    #   0.10 pid 1, cam 0  same identity+camera -> removed
    #   0.20 pid 2         wrong                -> list position 1
    #   0.30 pid 1, cam 1  hit                  -> position 2
    #   0.40 pid 0         distractor, wrong    -> position 3
    #   0.50 pid 1, cam 2  hit                  -> position 4
    d = np.array([[0.3, 0.1, 0.2, 0.4, 0.5, 0.05]])
    g_pids = [1, 1, 2, 0, 1, -1]
    g_cams = [1, 0, 1, 1, 2, 1]
    r = evaluate_rank(d, [1], g_pids, [0], g_cams, max_rank=5)
    np.testing.assert_array_equal(r["cmc"], [0, 1, 1, 1, 1])
    # standard AP: (1/2 + 2/4) / 2
    assert r["mAP"] == pytest.approx(0.5)
    # hardest hit at position 4 with 2 hits
    assert r["mINP"] == pytest.approx(0.5)
    assert r["num_valid_queries"] == 1
    m = evaluate_rank(d, [1], g_pids, [0], g_cams, max_rank=5, ap_mode="market")
    # market AP: hit 1: (0/1 + 1/2)/2 = 1/4; hit 2: (1/3 + 2/4)/2 = 5/12; mean = 1/3
    assert m["mAP"] == pytest.approx(1 / 3)
    np.testing.assert_array_equal(m["cmc"], r["cmc"])


def test_top_hit_gives_ap_one_in_both_modes():
    d = np.array([[0.1, 0.2, 0.3]])
    for mode in ("standard", "market"):
        r = evaluate_rank(d, [5], [5, 6, 7], [0], [1, 1, 1], max_rank=3, ap_mode=mode)
        assert r["mAP"] == 1.0
        np.testing.assert_array_equal(r["cmc"], [1, 1, 1])


def test_same_camera_match_is_excluded_not_counted_as_a_miss():
    # The only closer item is the query's own identity in its own camera: it must vanish, so the
    # cross-camera match is rank 1.
    d = np.array([[0.0, 0.5, 0.9]])
    r = evaluate_rank(d, [3], [3, 3, 4], [2], [2, 1, 1], max_rank=2)
    np.testing.assert_array_equal(r["cmc"], [1, 1])
    assert r["mAP"] == 1.0


def test_distractor_counts_as_wrong_match():
    d = np.array([[0.1, 0.2]])
    r = evaluate_rank(d, [3], [0, 3], [0], [1, 1], max_rank=2)
    np.testing.assert_array_equal(r["cmc"], [0, 1])
    assert r["mAP"] == pytest.approx(0.5)


def test_query_without_match_is_skipped_and_counted():
    # query 0 (pid 1) has a hit; query 1 (pid 2) has only a same-camera item; query 2 (pid 9)
    # has nothing in the gallery.
    d = np.array([[0.2, 0.1, 0.3], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    g_pids = [1, 5, 2]
    g_cams = [1, 1, 0]
    r = evaluate_rank(d, [1, 2, 9], g_pids, [0, 0, 0], g_cams, max_rank=3)
    assert r["num_valid_queries"] == 1
    assert r["num_queries"] == 3
    np.testing.assert_array_equal(r["cmc"], [0, 1, 1])
    assert r["mAP"] == pytest.approx(0.5)
    assert r["ap"][0] == pytest.approx(0.5)
    assert math.isnan(r["ap"][1]) and math.isnan(r["ap"][2])


def test_no_valid_query_raises():
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_rank(np.zeros((1, 2)), [1], [1, 2], [0], [0, 0])


def test_ties_resolved_against_the_true_match_in_any_gallery_order():
    # Hit and wrong match at the same distance: the hit ranks second, whatever the file order.
    for g_pids in ([1, 2], [2, 1]):
        r = evaluate_rank(np.array([[0.5, 0.5]]), [1], g_pids, [0], [1, 1], max_rank=2)
        np.testing.assert_array_equal(r["cmc"], [0, 1])
        assert r["mAP"] == pytest.approx(0.5)
    # A collapsed model (all distances equal) gets the worst case: 2 hits behind 3 wrong ones.
    r = evaluate_rank(np.zeros((1, 5)), [1], [1, 2, 1, 3, 4], [0], [1] * 5, max_rank=5)
    np.testing.assert_array_equal(r["cmc"], [0, 0, 0, 1, 1])
    assert r["mAP"] == pytest.approx((1 / 4 + 2 / 5) / 2)
    assert r["mINP"] == pytest.approx(2 / 5)


def test_tied_hits_among_themselves():
    # Two hits at the same distance behind one wrong match: positions 2 and 3.
    r = evaluate_rank(np.array([[0.3, 0.3, 0.1]]), [1], [1, 1, 2], [0], [1, 2, 1], max_rank=3)
    assert r["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_cmc_longer_than_gallery_stays_at_one():
    r = evaluate_rank(np.array([[0.2, 0.1]]), [1], [1, 2], [0], [1, 1], max_rank=4)
    np.testing.assert_array_equal(r["cmc"], [0, 1, 1, 1])


@pytest.mark.parametrize("ap_mode", ["standard", "market"])
@pytest.mark.parametrize("chunk_size", [1, 3, None])
@pytest.mark.parametrize("dense_above", [-1.0, 2.0], ids=["search-all", "gather"])
def test_matches_brute_force_on_random_cases(ap_mode, chunk_size, dense_above, monkeypatch):
    # Both ways of placing the wrong matches (whole chunk, or only the close ones) are forced.
    monkeypatch.setattr(rank_module, "DENSE_ABOVE", dense_above)
    rng = np.random.default_rng(7)
    nq, ng = 23, 61
    # Small integer distances force many ties; pids include distractors (0) and junk (-1).
    d = rng.integers(0, 6, size=(nq, ng)).astype(np.float32)
    q_pids = rng.integers(1, 8, size=nq)
    g_pids = rng.integers(-1, 8, size=ng)
    q_cams = rng.integers(0, 3, size=nq)
    g_cams = rng.integers(0, 3, size=ng)
    r = evaluate_rank(d, q_pids, g_pids, q_cams, g_cams, max_rank=10, ap_mode=ap_mode,
                      chunk_size=chunk_size)
    cmc, mAP, mINP, nvalid = brute_force(d.tolist(), q_pids, g_pids, q_cams, g_cams, 10, ap_mode)
    assert r["num_valid_queries"] == nvalid
    np.testing.assert_allclose(r["cmc"], cmc, rtol=0, atol=1e-12)
    assert r["mAP"] == pytest.approx(mAP, abs=1e-12)
    assert r["mINP"] == pytest.approx(mINP, abs=1e-12)


def test_market_ap_never_above_standard():
    # Before the j-th hit at position r the precision is (j-1)/(r-1) <= j/r (as r >= j), so the
    # trapezoid AP can only be lower.
    rng = np.random.default_rng(1)
    d = rng.random((30, 80))
    args = (rng.integers(0, 10, 30), rng.integers(0, 10, 80), rng.integers(0, 4, 30), rng.integers(0, 4, 80))
    s = evaluate_rank(d, *args)["ap"]
    m = evaluate_rank(d, *args, ap_mode="market")["ap"]
    ok = ~np.isnan(s)
    assert ok.any() and np.all(m[ok] <= s[ok] + 1e-12) and np.any(m[ok] < s[ok])


def test_accepts_tensors_and_half_precision():
    rng = np.random.default_rng(3)
    d = rng.random((12, 40)).astype(np.float32)
    args = [rng.integers(0, 5, 12), rng.integers(0, 5, 40), rng.integers(0, 2, 12), rng.integers(0, 2, 40)]
    ref = evaluate_rank(d, *args)
    t = evaluate_rank(torch.from_numpy(d), *[torch.from_numpy(a) for a in args])
    np.testing.assert_array_equal(t["cmc"], ref["cmc"])
    assert t["mAP"] == ref["mAP"]
    h = evaluate_rank(torch.from_numpy(d).half(), *args)
    cmc, mAP, _, _ = brute_force(torch.from_numpy(d).half().float().tolist(), *args, 50, "standard")
    assert h["mAP"] == pytest.approx(mAP, abs=1e-12)


@pytest.mark.parametrize("bad, match", [
    (dict(distmat=np.full((1, 2), np.nan)), "NaN"),
    (dict(distmat=np.zeros(3)), "2-D"),
    (dict(g_pids=[1, 2, 3]), "g_pids must be a 1-D array of length 2"),
    (dict(q_camids=[0.5]), "q_camids must hold integers"),
    (dict(ap_mode="interpolated"), "ap_mode"),
    (dict(max_rank=0), "max_rank"),
])
def test_bad_input_is_named(bad, match):
    args = dict(distmat=np.zeros((1, 2)), q_pids=[1], g_pids=[1, 2], q_camids=[0], g_camids=[1, 1])
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        evaluate_rank(**args)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(5)
    d = rng.random((50, 300)).astype(np.float32)
    args = [rng.integers(0, 20, 50), rng.integers(0, 20, 300), rng.integers(0, 3, 50), rng.integers(0, 3, 300)]
    ref = evaluate_rank(d, *args)
    got = evaluate_rank(torch.from_numpy(d).cuda(), *args)
    np.testing.assert_allclose(got["cmc"], ref["cmc"])
    assert got["mAP"] == pytest.approx(ref["mAP"], abs=1e-12)


def test_infinite_distances_are_ordinary_values():
    # +inf and -inf in one row make a NaN sum but are valid distances.
    d = np.array([[np.inf, -np.inf, 0.5, np.inf]])
    r = evaluate_rank(d, [1], [1, 2, 1, 3], [0], [1, 1, 1, 1], max_rank=4)
    # list: -inf (wrong), 0.5 (hit), inf (hit), inf (wrong, tied: counted first)
    assert r["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    np.testing.assert_array_equal(r["cmc"], [0, 1, 1, 1])


@pytest.mark.parametrize("dense_above", [-1.0, 2.0], ids=["search-all", "gather"])
def test_non_contiguous_distmat(dense_above, monkeypatch):
    monkeypatch.setattr(rank_module, "DENSE_ABOVE", dense_above)
    rng = np.random.default_rng(4)
    d = rng.random((12, 40)).astype(np.float32)
    args = [rng.integers(0, 5, 12), rng.integers(0, 5, 40), rng.integers(0, 2, 12), rng.integers(0, 2, 40)]
    transposed_view = torch.from_numpy(d.T.copy()).T
    assert not transposed_view.is_contiguous()
    got = evaluate_rank(transposed_view, *args)
    _, mAP, mINP, _ = brute_force(d.tolist(), *args, 50, "standard")
    assert got["mAP"] == pytest.approx(mAP, abs=1e-12)
    assert got["mINP"] == pytest.approx(mINP, abs=1e-12)


def test_ranking_runs_on_one_cpu_thread_and_restores_the_setting(monkeypatch):
    seen = []
    inner = rank_module._evaluate_rank
    monkeypatch.setattr(rank_module, "_evaluate_rank",
                        lambda *a, **k: seen.append(torch.get_num_threads()) or inner(*a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        d = torch.rand(5, 9)
        r = rank_module.evaluate_rank(d, np.arange(5) % 3, np.arange(9) % 3, np.zeros(5, int), np.ones(9, int))
        assert seen == [1] and torch.get_num_threads() == 2 and r["num_valid_queries"] == 5
    finally:
        torch.set_num_threads(before)
