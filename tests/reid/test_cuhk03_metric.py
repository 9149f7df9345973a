import numpy as np
import pytest

from sharpattn.reid.metrics import evaluate_cuhk03_classic


def layout(num_ids, per_cam):
    """Every identity with ``per_cam`` images in camera 0 and in camera 1 (query = gallery)."""
    pids = np.repeat(np.arange(1, num_ids + 1), 2 * per_cam)
    cams = np.tile(np.repeat([0, 1], per_cam), num_ids)
    return pids, cams


def test_gallery_image_is_always_from_the_other_camera():
    # Same identity + same camera: distance 0 (a perfect but forbidden match); same identity,
    # other camera: 1.0; other identities: 0.5. The true match must rank behind all 4 others.
    pids, cams = layout(5, 2)
    same = pids[:, None] == pids[None, :]
    d = np.where(same, np.where(cams[:, None] == cams[None, :], 0.0, 1.0), 0.5)
    r = evaluate_cuhk03_classic(d, pids, pids, cams, cams, num_draws=7, seed=1, max_rank=6)
    np.testing.assert_allclose(r["cmc"], [0, 0, 0, 0, 1, 1])
    assert r["mAP"] == pytest.approx(1 / 5)
    assert r["num_identities"] == 5 and r["num_draws"] == 7


def test_single_shot_ranks_worked_by_hand():
    # 3 identities, one image per camera. True pairs at distance 1. Identity 3's probe is at
    # 0.5 from every image of identity 1, all other cross-identity distances are 2. Whatever
    # the draw: identities 1, 2 rank their match first, identity 3 second.
    pids, cams = layout(3, 1)
    d = np.full((6, 6), 2.0)
    d[pids[:, None] == pids[None, :]] = 1.0
    d[np.ix_(pids == 3, pids == 1)] = 0.5
    r = evaluate_cuhk03_classic(d, pids, pids, cams, cams, num_draws=20, seed=0, max_rank=3)
    np.testing.assert_allclose(r["cmc"], [2 / 3, 1, 1])
    assert r["mAP"] == pytest.approx((1 + 1 + 1 / 2) / 3)


def test_draws_are_seeded():
    rng = np.random.default_rng(0)
    pids, cams = layout(30, 3)
    d = rng.random((len(pids), len(pids)))
    a = evaluate_cuhk03_classic(d, pids, pids, cams, cams, seed=3)
    b = evaluate_cuhk03_classic(d, pids, pids, cams, cams, seed=3)
    c = evaluate_cuhk03_classic(d, pids, pids, cams, cams, seed=4)
    np.testing.assert_array_equal(a["cmc"], b["cmc"])
    assert a["mAP"] == b["mAP"] != c["mAP"]


def test_identity_seen_by_one_camera_is_left_out():
    pids = np.array([1, 1, 2, 2])
    cams = np.array([0, 1, 0, 0])
    r = evaluate_cuhk03_classic(np.zeros((4, 4)), pids, pids, cams, cams, num_draws=2, max_rank=2)
    assert r["num_identities"] == 1
    with pytest.raises(ValueError, match="different cameras"):
        evaluate_cuhk03_classic(np.zeros((2, 2)), [1, 1], [1, 1], [0, 0], [0, 0])
