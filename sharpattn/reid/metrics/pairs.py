"""Pair statistics of a labelled training set, for the learned metrics (XQDA, KISSME).

Both metrics are defined on pairs of images taken by *different* cameras: a pair of the same
identity is a positive (intra-class) pair, a pair of two identities a negative (extra-class)
pair. Liao's XQDA has two views (a probe and a gallery camera) and pairs one image of each; a
re-ID training split is one set with several cameras, so here a pair is cross-view when its two
images come from different cameras. With exactly two cameras this is Liao's definition (the
tests check it); with more, every cross-camera pair counts once.

The sums of outer products of pair differences are computed in closed form from class sums, never
by enumerating pairs: over the unordered pairs {i, j} of a pair set P,

    sum (x_i - x_j)(x_i - x_j)^T = sum_i a_i x_i x_i^T - sum_{(i, j) ordered} x_i x_j^T
                                 = X^T (a * X - Y),

where a_i is the number of partners of i in P and Y_i the sum of their features. For the
positives, Y_i = (sum over i's identity) - (sum over i's identity in i's camera); for all
cross-camera pairs, Y_i = (sum over everything) - (sum over i's camera), and the negatives are
the difference of the two. Both products are symmetric, so only their lower triangles are
computed: about 5/4 n d^2 multiply-adds, accumulated in float64.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

__all__ = ["add_lower_product", "check_training_set", "cross_camera_scatter", "mirror_lower",
           "sample_negative_pairs"]


def _as_tensor(x, name):
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be an array or tensor, got {type(x).__name__}") from e


def _labels(x, name, n, device):
    t = _as_tensor(x, name)
    if t.dim() != 1 or t.numel() != n:
        raise ValueError(f"{name} must be 1-D with one entry per feature row ({n}), got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got {t.dtype}")
    return t.to(device=device, dtype=torch.long)


def check_training_set(features, pids, camids, who):
    """Features ``(n, d)`` (float, finite) with integer identities and cameras; the degenerate
    cases every learned metric refuses raise a ValueError that says what is missing."""
    x = _as_tensor(features, "features")
    if x.dim() != 2:
        raise ValueError(f"{who}.fit: features must be 2-D (num_samples, dim), got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        x = x.float()
    n, d = x.shape
    if n < 2 or d < 1:
        raise ValueError(f"{who}.fit needs at least 2 samples of dimension >= 1, got {n} x {d}")
    pids = _labels(pids, "pids", n, x.device)
    camids = _labels(camids, "camids", n, x.device)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{who}.fit: features contain NaN or infinity")
    num_ids, num_cams = len(torch.unique(pids)), len(torch.unique(camids))
    if num_ids < 2:
        raise ValueError(f"{who}.fit needs features of at least 2 identities (negative pairs), got {num_ids}")
    if num_cams < 2:
        raise ValueError(f"{who}.fit needs at least 2 cameras: its pairs are pairs of images from different "
                         f"cameras (the two views), got one camera")
    return x, pids, camids


def _group(keys):
    """Dense group index per row and the size of each group."""
    uniq, inv = torch.unique(keys, return_inverse=True)
    return inv, torch.bincount(inv, minlength=len(uniq))


def _chunks(n, d, rows):
    if rows is None:  # about 48 MiB of float64 temporaries per chunk
        rows = max(256, (48 << 20) // (8 * 3 * max(1, d)))
    return [(s, min(n, s + rows)) for s in range(0, n, rows)]


def add_lower_product(out, x, z, blocks=4):
    """``out += x^T z`` for an ``x^T z`` known to be symmetric, computing only the column blocks'
    rows on and below the diagonal (about 5/8 of the multiply-adds with 4 blocks); the strict
    upper triangle of ``out`` is left for :func:`mirror_lower`."""
    d = out.shape[0]
    step = -(-d // blocks)
    for s in range(0, d, step):
        out[s:, s:s + step] += x[:, s:].T @ z[:, s:s + step]
    return out


def mirror_lower(a):
    """The symmetric matrix whose lower triangle is ``a``'s."""
    return torch.tril(a) + torch.tril(a, -1).T


def cross_camera_scatter(x, pids, camids, negatives=True, chunk_rows=None, progress=False, desc="pairs"):
    """Sums of ``(x_i - x_j)(x_i - x_j)^T`` over the unordered cross-camera pairs, in float64.

    Returns ``(pos_sum, num_pos, neg_sum, num_neg)``: positives are same-identity pairs,
    negatives different-identity pairs (``neg_sum`` and ``num_neg`` are ``None`` when
    ``negatives=False``). Rows of ``x`` are converted to float64 a chunk at a time.
    Raises ValueError when there is no positive (or, if asked for, no negative) pair.
    """
    n, d = x.shape
    dev, f64 = x.device, torch.float64
    pid_idx, pid_n = _group(pids)
    cam_idx, cam_n = _group(camids)
    cell_idx, cell_n = _group(pid_idx * len(cam_n) + cam_idx)
    a = (pid_n[pid_idx] - cell_n[cell_idx]).to(f64)          # positive partners of each row
    b = (n - cam_n[cam_idx]).to(f64)                          # all cross-camera partners
    num_pos = int(a.sum().item()) // 2
    num_neg = int((b - a).sum().item()) // 2
    if num_pos == 0:
        raise ValueError("no identity has images from two different cameras: there is no positive "
                         "cross-camera pair to learn from")
    if negatives and num_neg == 0:
        raise ValueError("no two identities were seen by different cameras: there is no negative "
                         "cross-camera pair to learn from")
    chunks = _chunks(n, d, chunk_rows)
    bar = tqdm(total=2 * len(chunks), desc=desc, disable=not progress or len(chunks) < 4, leave=False)

    # Pass 1: sums per identity, per (identity, camera) cell, per camera and overall.
    pid_sum = torch.zeros(len(pid_n), d, dtype=f64, device=dev)
    cell_sum = torch.zeros(len(cell_n), d, dtype=f64, device=dev)
    cam_sum = torch.zeros(len(cam_n), d, dtype=f64, device=dev)
    for s, e in chunks:
        xc = x[s:e].to(f64)
        pid_sum.index_add_(0, pid_idx[s:e], xc)
        cell_sum.index_add_(0, cell_idx[s:e], xc)
        cam_sum.index_add_(0, cam_idx[s:e], xc)
        bar.update(1)
    total = cam_sum.sum(0)

    # Pass 2: X^T (a * X - Y) for the positives and, alongside, for all cross-camera pairs.
    pos = torch.zeros(d, d, dtype=f64, device=dev)
    neg = torch.zeros(d, d, dtype=f64, device=dev) if negatives else None
    for s, e in chunks:
        xc = x[s:e].to(f64)
        z_pos = a[s:e, None] * xc - (pid_sum[pid_idx[s:e]] - cell_sum[cell_idx[s:e]])
        add_lower_product(pos, xc, z_pos)  # both products are symmetric (the pairs are)
        if negatives:
            z_all = b[s:e, None] * xc - (total - cam_sum[cam_idx[s:e]])
            add_lower_product(neg, xc, z_all - z_pos)
        bar.update(1)
    bar.close()
    return mirror_lower(pos), num_pos, (mirror_lower(neg) if negatives else None), (num_neg if negatives else None)


def sample_negative_pairs(pids, camids, num, seed=0):
    """``num`` ordered pairs ``(i, j)`` drawn uniformly, with replacement, from the pairs of two
    different identities seen by two different cameras; numpy index arrays.

    The draw depends only on ``seed`` and the order of the rows (KISSME sorts its rows into a
    canonical order first, so its pairs do not depend on the order of the input).
    """
    pids, camids = np.asarray(pids), np.asarray(camids)
    n = len(pids)
    if num < 1:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    # Count the valid ordered pairs exactly, to refuse an empty set and size the draws.
    _, pid_inv, pid_n = np.unique(pids, return_inverse=True, return_counts=True)
    _, cam_inv, cam_n = np.unique(camids, return_inverse=True, return_counts=True)
    _, cell_inv, cell_n = np.unique(pid_inv * len(cam_n) + cam_inv, return_inverse=True, return_counts=True)
    valid = int((n - pid_n[pid_inv] - cam_n[cam_inv] + cell_n[cell_inv]).sum())
    if valid == 0:
        raise ValueError("no pair of different identities from different cameras to sample negatives from")
    accept = valid / float(n) ** 2
    rng = np.random.default_rng(seed)
    got_i, got_j, have = [], [], 0
    while have < num:
        size = int(min(1 << 24, max(1024, 1.2 * (num - have) / accept)))
        i = rng.integers(0, n, size)
        j = rng.integers(0, n, size)
        keep = (pids[i] != pids[j]) & (camids[i] != camids[j])
        got_i.append(i[keep])
        got_j.append(j[keep])
        have += int(keep.sum())
    return np.concatenate(got_i)[:num], np.concatenate(got_j)[:num]
