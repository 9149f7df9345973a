"""Speed of the learned metrics (XQDA, KISSME) at Market-1501's size.

Run: python -m pytest benchmarks/bench_reid_metrics.py --benchmark-only
Targets (issue 14): fitting on Market-1501's training split (12,936 x 2,048 features, 751
identities, 6 cameras) takes seconds on 2 CPU cores; a 3,368 x 15,913 distance matrix takes at
most 3x the Euclidean's time. Each result records the load average before and after it, the
thread count and what the fit kept (XQDA's dimensions), since the distance cost grows with them.
"""

import os
import time

import numpy as np
import pytest
import torch

from sharpattn.reid.metrics import KISSME, XQDA, Euclidean, compute_distance_matrix

NUM_TRAIN, NUM_TRAIN_IDS, NUM_QUERY, NUM_GALLERY, NUM_CAMS, DIM = 12936, 751, 3368, 15913, 6, 2048


def features(num, num_ids, seed):
    """ResNet-50-like 2,048-D features (non-negative, identity and camera structure) with labels."""
    rng = np.random.default_rng(seed)
    pids = np.sort(rng.integers(0, num_ids, num))
    cams = rng.integers(0, NUM_CAMS, num)
    basis = rng.normal(size=(64, DIM)).astype(np.float32) / 8
    centres = rng.normal(size=(num_ids, 64)).astype(np.float32) @ basis
    cam_shift = 0.3 * rng.normal(size=(NUM_CAMS, DIM)).astype(np.float32)
    x = centres[pids] + cam_shift[cams] + 0.5 * rng.normal(size=(num, DIM)).astype(np.float32)
    return torch.from_numpy(np.maximum(x, 0)), pids, cams


@pytest.fixture(scope="module")
def train_split():
    return features(NUM_TRAIN, NUM_TRAIN_IDS, seed=0)


@pytest.fixture(scope="module")
def test_split():
    qf, _, _ = features(NUM_QUERY, 750, seed=1)
    gf, _, _ = features(NUM_GALLERY, 750, seed=2)
    return qf, gf


@pytest.fixture(scope="module")
def fitted(train_split):
    # XQDA's distance cost grows with the dimensions it keeps; "xqda_all_dims" is its worst case,
    # all 2,048 kept (a random orthonormal W and a positive diagonal M, set by hand)
    worst = XQDA()
    worst.dim = DIM
    g = torch.Generator().manual_seed(0)
    w, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=g, dtype=torch.float64))
    worst._set_metric(w, torch.diag(torch.rand(DIM, generator=g, dtype=torch.float64) + 0.1))
    worst.info = {"dims_kept": DIM}
    return {"euclidean": Euclidean().fit(train_split[0]), "xqda": XQDA().fit(*train_split),
            "kissme": KISSME().fit(*train_split), "xqda_all_dims": worst}


def _timed(benchmark, fn, rounds, warmup_rounds=0, **extra):
    """Run ``fn`` under pytest-benchmark, recording load, threads and the median CPU seconds."""
    cpu = []

    def call():
        t0 = time.process_time()
        result = fn()
        cpu.append(time.process_time() - t0)
        return result

    load_before = os.getloadavg()[0]
    result = benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
    benchmark.extra_info.update(threads=torch.get_num_threads(), load_before=load_before,
                                load_after=os.getloadavg()[0], cpu_s=float(np.median(cpu[warmup_rounds:])),
                                **extra)
    return result


@pytest.mark.parametrize("name", ["xqda", "kissme"])
def test_fit_market_size(benchmark, train_split, name, threads):
    make = {"xqda": XQDA, "kissme": KISSME}[name]
    metric = _timed(benchmark, lambda: make().fit(*train_split), rounds=3)
    benchmark.extra_info.update({k: v for k, v in metric.info.items() if k != "eigenvalues"})


@pytest.mark.parametrize("name", ["euclidean_sqrt", "euclidean", "xqda", "kissme", "xqda_all_dims"])
def test_distance_market_size(benchmark, test_split, fitted, name, threads):
    qf, gf = test_split
    out = torch.empty(NUM_QUERY, NUM_GALLERY)
    if name == "euclidean_sqrt":  # compute_distance_matrix's default, what evaluation uses
        fn = lambda: compute_distance_matrix(qf, gf, out=out)  # noqa: E731
    else:
        fn = lambda: fitted[name].distance(qf, gf, out=out)  # noqa: E731
    info = fitted[name].info if name in fitted else {}
    _timed(benchmark, fn, rounds=3, warmup_rounds=1, dims=info.get("dims_kept", info.get("pca_dim", DIM)))
    assert torch.isfinite(out).all()
