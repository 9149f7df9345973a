"""CUHK03's classic single-shot evaluation (Li et al. 2014; the SAN paper's CUHK03 numbers)."""

from __future__ import annotations

import numpy as np
import torch

from .rank import evaluate_rank

__all__ = ["evaluate_cuhk03_classic"]


def evaluate_cuhk03_classic(distmat, q_pids, g_pids, q_camids, g_camids, num_draws=20, seed=0,
                            max_rank=50):
    """Single-gallery-shot scoring, averaged over ``num_draws`` random draws.

    In each draw, every test identity gets one probe, drawn from its query images, and one
    gallery image, drawn from its gallery images taken by another camera than the probe; the
    probes are ranked against those gallery images only (one per identity), and the results of
    the draws are averaged. ``distmat`` is the full (query, gallery) matrix; with the classic
    CUHK03 split, query and gallery are the same list of test images.

    Identities without a cross-camera pair are left out (``num_identities`` counts those kept).
    The draws depend only on ``seed``. Returns ``cmc`` (length ``max_rank``), ``mAP`` and
    ``mINP`` (equal here: one true match per probe, AP = 1 / rank), ``num_identities`` and
    ``num_draws``.
    """
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    d = distmat.detach().cpu().numpy() if isinstance(distmat, torch.Tensor) else np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    if d.shape != (len(q_pids), len(g_pids)) or len(q_camids) != len(q_pids) or len(g_camids) != len(g_pids):
        raise ValueError(f"distmat {d.shape} does not match {len(q_pids)} queries and "
                         f"{len(g_pids)} gallery items")
    q_of = {p: np.flatnonzero(q_pids == p) for p in np.unique(q_pids)}
    g_of = {p: np.flatnonzero(g_pids == p) for p in np.unique(g_pids)}
    # identities that have some probe with a gallery image from another camera
    usable = [p for p in sorted(q_of) if p in g_of and p >= 0 and
              any((g_camids[g_of[p]] != q_camids[i]).any() for i in q_of[p])]
    if not usable:
        raise ValueError("no identity has a query and a gallery image from different cameras")

    rng = np.random.default_rng(seed)
    cmc, ap = np.zeros(max_rank), 0.0
    for _ in range(num_draws):
        probes, gals = [], []
        for p in usable:
            # only probes that have a cross-camera partner can be drawn
            cands = [i for i in q_of[p] if (g_camids[g_of[p]] != q_camids[i]).any()]
            probe = cands[rng.integers(len(cands))]
            others = g_of[p][g_camids[g_of[p]] != q_camids[probe]]
            probes.append(probe)
            gals.append(others[rng.integers(len(others))])
        probes, gals = np.array(probes), np.array(gals)
        r = evaluate_rank(d[np.ix_(probes, gals)], q_pids[probes], g_pids[gals], q_camids[probes],
                          g_camids[gals], max_rank=max_rank)
        cmc += r["cmc"]
        ap += r["mAP"]
    return {"cmc": cmc / num_draws, "mAP": ap / num_draws, "mINP": ap / num_draws,
            "num_identities": len(usable), "num_draws": num_draws}
