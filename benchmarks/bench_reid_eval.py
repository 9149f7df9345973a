"""Speed of the re-ID evaluation at Market-1501's size (3,368 queries x 15,913 gallery images).

Run: python -m pytest benchmarks/bench_reid_eval.py --benchmark-only
The goal (issue 6) is well under a second on a 2-core CPU for ranking + scoring.
"""

import numpy as np
import pytest
import torch

from sharpattn.reid.metrics import compute_distance_matrix, evaluate_rank

NUM_QUERY, NUM_GALLERY, NUM_TEST_IDS, NUM_CAMS, NUM_DISTRACTORS = 3368, 15913, 750, 6, 2793


def market_like(noise, seed=0):
    """Labels shaped like Market-1501's test split and 128-D embeddings (SAN's size) with
    identity structure; ``noise`` sets how hard the ranking is."""
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, NUM_TEST_IDS + 1, NUM_QUERY)
    g_pids = np.concatenate([rng.integers(1, NUM_TEST_IDS + 1, NUM_GALLERY - NUM_DISTRACTORS),
                             np.zeros(NUM_DISTRACTORS, dtype=np.int64)])
    q_cams = rng.integers(0, NUM_CAMS, NUM_QUERY)
    g_cams = rng.integers(0, NUM_CAMS, NUM_GALLERY)
    centres = rng.normal(size=(NUM_TEST_IDS + 1, 128)).astype(np.float32)
    cam_shift = 0.3 * rng.normal(size=(NUM_CAMS, 128)).astype(np.float32)
    qf = centres[q_pids] + cam_shift[q_cams] + noise * rng.normal(size=(NUM_QUERY, 128)).astype(np.float32)
    gf = centres[g_pids] + cam_shift[g_cams] + noise * rng.normal(size=(NUM_GALLERY, 128)).astype(np.float32)
    gf[g_pids == 0] = rng.normal(size=(NUM_DISTRACTORS, 128)) * 1.3  # distractors: nobody in particular
    return torch.from_numpy(qf), torch.from_numpy(gf), q_pids, g_pids, q_cams, g_cams


@pytest.fixture(scope="module")
def trained_like():
    # noise 1.1 gives mAP ~0.83, rank-1 ~0.98, mINP ~0.40: like a good Market-1501 model
    qf, gf, *labels = market_like(noise=1.1)
    return compute_distance_matrix(qf, gf), labels


@pytest.mark.parametrize("ap_mode", ["standard", "market"])
def test_rank_market_size(benchmark, trained_like, ap_mode, threads):
    distmat, labels = trained_like
    result = benchmark.pedantic(evaluate_rank, args=(distmat, *labels), kwargs={"ap_mode": ap_mode},
                                rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(mAP=result["mAP"], rank1=float(result["cmc"][0]), mINP=result["mINP"],
                                threads=threads)
    assert result["num_valid_queries"] > 0


def test_rank_market_size_random_scores(benchmark, threads):
    # Worst case: random distances, so every wrong match may sit among the true matches.
    rng = np.random.default_rng(1)
    _, _, *labels = market_like(noise=1.0)
    distmat = torch.from_numpy(rng.random((NUM_QUERY, NUM_GALLERY), dtype=np.float32))
    result = benchmark.pedantic(evaluate_rank, args=(distmat, *labels), rounds=3, iterations=1)
    benchmark.extra_info.update(mAP=result["mAP"])


def test_distance_market_size_128d(benchmark):
    qf, gf, *_ = market_like(noise=1.1)
    benchmark.pedantic(compute_distance_matrix, args=(qf, gf), rounds=3, iterations=1)
