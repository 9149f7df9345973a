"""k-reciprocal re-ranking (Zhong, Zheng, Cao and Li, CVPR 2017) without an (N, N) matrix.

The published algorithm, over all N = query + gallery images:

1. ``d(i, j)``: squared Euclidean distance, divided by the largest distance in row i.
2. ``N(i, k)``: the k nearest neighbours of i (i itself first). The k-reciprocal set
   ``R(i) = {j in N(i, k1+1) : i in N(j, k1+1)}`` is enlarged by ``R_half(c)`` (the same with
   ``round(k1/2)``) for every c in R(i) whose ``R_half(c)`` shares more than 2/3 of its
   members with R(i).
3. ``V[i, j] = exp(-d(i, j))`` over that set, normalised to sum 1; with ``k2 > 1``, row i is
   replaced by the mean of the rows of its ``k2`` nearest neighbours (query expansion).
4. Jaccard distance ``1 - s / (2 - s)`` with ``s = sum_f min(V[i, f], V[j, f])``, and the final
   distance ``(1 - lambda) * jaccard + lambda * d``, query rows x gallery columns.

Here the neighbour lists come from one pass over blocks of distance rows (only the ``k1 + 1``
nearest are kept), V is sparse (a row has a few dozen entries), and the distances needed for
the weights are recomputed block by block. Memory: the features, the (q, g) output and O(N * k1)
for the rest. The published code keeps V and the distances in float16; this keeps float32, so
results can differ from it in the last digits.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from .distance import compute_distance_matrix

__all__ = ["re_ranking"]


def _reciprocal(rank, k):
    """For every row i, the mask over ``rank[i, :k+1]`` of members j that have i in ``rank[j, :k+1]``."""
    n = rank.shape[0]
    fwd = rank[:, :k + 1]
    out = np.empty(fwd.shape, dtype=bool)
    step = max(1, (1 << 22) // ((k + 1) ** 2))  # keep the (rows, k+1, k+1) gather small
    for s in range(0, n, step):
        back = fwd[fwd[s:s + step]]  # (rows, k+1, k+1)
        out[s:s + step] = (back == np.arange(s, min(n, s + step))[:, None, None]).any(2)
    return out


def re_ranking(qf, gf, k1=20, k2=6, lambda_value=0.3, block_rows=None, progress=True):
    """Re-ranked (num_query, num_gallery) distances of query features ``qf`` and gallery
    features ``gf`` (tensors on any device; the neighbour bookkeeping runs on the CPU).

    Returns a float32 CPU tensor; feed it to :func:`evaluate_rank` like any distance matrix.
    Defaults are the paper's (k1=20, k2=6, lambda=0.3).
    """
    if not (k1 >= 1 and 1 <= k2 <= k1 + 1):
        raise ValueError(f"need k1 >= 1 and 1 <= k2 <= k1 + 1, got k1={k1}, k2={k2}")
    if not 0 <= lambda_value <= 1:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    qf, gf = torch.as_tensor(qf), torch.as_tensor(gf)
    if qf.dim() != 2 or gf.dim() != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"features must be (q, d) and (g, d) with the same d, got "
                         f"{tuple(qf.shape)} and {tuple(gf.shape)}")
    nq, ng = qf.shape[0], gf.shape[0]
    feats = torch.cat([qf, gf.to(qf.device)]).float()
    n = feats.shape[0]
    if k1 + 1 > n:
        raise ValueError(f"k1={k1} needs more than {k1} images in query + gallery, got {n}")
    if block_rows is None:
        block_rows = max(1, (64 << 20) // (4 * n))
    blocks = [(s, min(n, s + block_rows)) for s in range(0, n, block_rows)]

    # Pass 1: row maxima, the k1+1 nearest neighbours, and the query x gallery distances.
    rank = np.empty((n, k1 + 1), dtype=np.int64)
    row_max = torch.empty(n, dtype=torch.float32)
    original = torch.empty((nq, ng), dtype=torch.float32)
    for s, e in tqdm(blocks, desc="re-ranking: neighbours", disable=not progress, leave=False):
        d = compute_distance_matrix(feats[s:e], feats, "sqeuclidean")
        mx = d.max(1).values.clamp_(min=torch.finfo(torch.float32).tiny)
        row_max[s:e] = mx.cpu()
        rank[s:e] = torch.topk(d, k1 + 1, dim=1, largest=False, sorted=True).indices.cpu().numpy()
        if s < nq:
            original[s:min(e, nq)] = (d[:min(e, nq) - s, nq:] / mx[:min(e, nq) - s, None]).cpu()

    # k-reciprocal sets and their expansion.
    half = round(k1 / 2)
    recip = _reciprocal(rank, k1)
    recip_half = _reciprocal(rank, half)
    members = [rank[i][recip[i]] for i in range(n)]
    half_members = [rank[i, :half + 1][recip_half[i]] for i in range(n)]
    expansion = []
    for i in tqdm(range(n), desc="re-ranking: k-reciprocal sets", disable=not progress, leave=False):
        base = members[i]
        parts = [base]
        for c in base:
            cand = half_members[c]
            if np.isin(cand, base).sum() > 2 / 3 * len(cand):
                parts.append(cand)
        expansion.append(np.unique(np.concatenate(parts)))

    # Pass 2: V as a sparse matrix (CSR arrays), weights from recomputed distance rows.
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(x) for x in expansion])
    indices = np.concatenate(expansion)
    data = np.empty(len(indices), dtype=np.float32)
    for s, e in tqdm(blocks, desc="re-ranking: weights", disable=not progress, leave=False):
        d = compute_distance_matrix(feats[s:e], feats, "sqeuclidean")
        d = (d / row_max[s:e, None].to(d.device)).cpu().numpy()
        for i in range(s, e):
            sl = slice(indptr[i], indptr[i + 1])
            w = np.exp(-d[i - s, indices[sl]])
            data[sl] = w / w.sum()

    if k2 > 1:
        indptr, indices, data = _query_expansion(indptr, indices, data, rank[:, :k2], n)

    # Jaccard distance of each query row to each gallery row, through V's columns.
    col_order = np.argsort(indices, kind="stable")
    col_rows = np.repeat(np.arange(n), np.diff(indptr))[col_order]
    col_vals = data[col_order]
    col_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(indices, minlength=n), out=col_ptr[1:])
    final = original.mul_(lambda_value)  # reuse the (q, g) buffer for the result
    out = final.numpy()
    for i in tqdm(range(nq), desc="re-ranking: jaccard", disable=not progress, leave=False):
        feats_i = indices[indptr[i]:indptr[i + 1]]
        vals_i = data[indptr[i]:indptr[i + 1]]
        starts, ends = col_ptr[feats_i], col_ptr[feats_i + 1]
        lens = ends - starts
        # positions of every (feature, row) entry of the columns row i touches
        pos = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
        mins = np.minimum(np.repeat(vals_i, lens), col_vals[pos])
        shared = np.bincount(col_rows[pos], weights=mins, minlength=n)[nq:]
        out[i] += (1 - lambda_value) * (1 - shared / (2 - shared)).astype(np.float32)
    return final


def _query_expansion(indptr, indices, data, neighbours, n):
    """Rows of the sparse V replaced by the mean of the rows of their ``k2`` nearest neighbours."""
    k2 = neighbours.shape[1]
    lens = np.diff(indptr)
    src = neighbours.reshape(-1)  # row i gathers rows neighbours[i]
    owner = np.repeat(np.arange(n), k2)
    take_lens = lens[src]
    pos = np.repeat(indptr[src] - np.cumsum(take_lens) + take_lens, take_lens) + np.arange(take_lens.sum())
    rows = np.repeat(owner, take_lens)
    keys = rows * n + indices[pos]
    uniq, inv = np.unique(keys, return_inverse=True)
    vals = np.bincount(inv, weights=data[pos] / k2).astype(np.float32)
    new_rows = uniq // n
    new_indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(new_rows, minlength=n), out=new_indptr[1:])
    return new_indptr, (uniq % n).astype(np.int64), vals
