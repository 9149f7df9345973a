"""CMC, mAP and mINP of a query x gallery distance matrix, under the standard re-ID protocol.

Protocol (the one of Market-1501, DukeMTMC-reID, MSMT17 and CUHK03-NP):

* A gallery item with the query's identity *and* the query's camera is junk for that query: it is
  removed from the ranked list (it is neither a hit nor a miss).
* A gallery item with identity ``-1`` is junk for every query (the official Market-1501 code
  treats its ``-1`` "junk" boxes so; our parsers already drop them).
* Every other gallery item with the query's identity is a true match; anything else (including
  Market-1501's distractors, identity ``0``) is a wrong match.
* A query without any true match is skipped; ``num_valid_queries`` says how many were kept.
* CMC is first-match: ``cmc[k]`` is the fraction of valid queries whose first true match is
  within the top ``k + 1`` of the remaining list.

Ties in distance between a true match and a wrong match are resolved *against* the true match
(the wrong one ranks first). With continuous features ties do not happen and this changes
nothing; with degenerate features (a collapsed model giving every image the same embedding) it
reports the worst case instead of a score that depends on the gallery's file order.

Instead of sorting every row (3,368 x 15,913 floats takes seconds on two cores), each query's
true-match distances are sorted (a handful of values), and the wrong matches closer than the
farthest true match (few, for a trained model) are gathered and placed among them by binary
search; the rank of the j-th true match is j plus the number of wrong matches placed before it.
This is exact and reads the matrix about twice.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

__all__ = ["evaluate_rank", "AP_MODES"]

AP_MODES = ("standard", "market")

# Label of junk gallery images in the official Market-1501 evaluation.
JUNK_PID = -1
# Above this fraction of a chunk's entries lying before a query's farthest true match, searching
# the whole chunk beats gathering those entries.
DENSE_ABOVE = 1 / 8


def _as_tensor(x, name, device):
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be an array or tensor, got {type(x).__name__}") from e
    return t.to(device)


def _check_labels(x, name, length, device):
    t = _as_tensor(x, name, device)
    if t.dim() != 1 or t.numel() != length:
        raise ValueError(f"{name} must be a 1-D array of length {length}, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
        raise TypeError(f"{name} must hold integers, got {t.dtype}")
    return t.long()


def _default_chunk(num_gallery, device):
    # Keep a chunk of the matrix around a few MB on the CPU (cache-sized passes) and larger on
    # a GPU, where the per-launch overhead dominates.
    budget = 1 << 20 if device.type == "cpu" else 1 << 24
    return max(1, budget // max(1, num_gallery))


@contextlib.contextmanager
def _one_cpu_thread(device):
    """The ranking runs on one CPU thread. Its chunks are cache-sized passes that two threads speed
    up little when the cores are idle (0.12 s vs 0.20 s at Market-1501 size), while busy cores make
    torch's threads wait on each other (6.7 s with 2 threads vs 0.29 s with 1, measured with
    another process keeping both cores busy)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, ap_mode="standard",
                  chunk_size=None):
    """Score a ranking under the standard re-ID protocol (see the module docs), on one CPU thread.

    Args:
        distmat: ``(num_query, num_gallery)`` distances (numpy array or tensor, any device);
            smaller means more similar. NaN is an error.
        q_pids, g_pids: integer identities of queries and gallery items.
        q_camids, g_camids: integer camera ids.
        max_rank: length of the returned CMC curve.
        ap_mode: ``"standard"``: non-interpolated AP, the mean over true matches of the
            precision at each hit (torchreid, fast-reid). ``"market"``: the official Market-1501
            code's AP, where each hit contributes the mean of the precision just before it and at
            it (a trapezoid under the precision-recall curve). The precision just before a hit
            is never above the one at it, so this AP is never higher than the standard one.
        chunk_size: queries per chunk (memory bound); chosen automatically when ``None``.

    Returns:
        dict with ``cmc`` (float64 numpy array of length ``max_rank``), ``mAP``, ``mINP``
        (floats in [0, 1]), ``num_valid_queries``, ``num_queries`` and ``ap`` (per-query AP,
        NaN for skipped queries).
    """
    device = distmat.device if isinstance(distmat, torch.Tensor) else torch.device("cpu")
    with _one_cpu_thread(device):
        return _evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, ap_mode, chunk_size)


def _evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, ap_mode="standard",
                   chunk_size=None):
    if ap_mode not in AP_MODES:
        raise ValueError(f"ap_mode must be one of {AP_MODES}, got {ap_mode!r}")
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    max_rank = int(max_rank)

    if not isinstance(distmat, torch.Tensor):
        distmat = torch.as_tensor(np.asarray(distmat))
    if distmat.dim() != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {tuple(distmat.shape)}")
    if not distmat.dtype.is_floating_point:
        distmat = distmat.double()
    device = distmat.device
    num_q, num_g = distmat.shape
    q_pids = _check_labels(q_pids, "q_pids", num_q, device)
    q_camids = _check_labels(q_camids, "q_camids", num_q, device)
    g_pids = _check_labels(g_pids, "g_pids", num_g, device)
    g_camids = _check_labels(g_camids, "g_camids", num_g, device)
    if num_q == 0 or num_g == 0:
        raise ValueError(f"empty query or gallery: distmat has shape {tuple(distmat.shape)}")
    # float16/bfloat16 are compared in float32; float64 stays exact.
    work_dtype = torch.float64 if distmat.dtype == torch.float64 else torch.float32

    # Gallery indices grouped by identity, so each query's same-identity items are one slice.
    g_order = torch.argsort(g_pids, stable=True)
    g_pids_sorted = g_pids[g_order]
    first = torch.searchsorted(g_pids_sorted, q_pids, right=False)
    count = torch.searchsorted(g_pids_sorted, q_pids, right=True) - first
    count = torch.where(q_pids == JUNK_PID, torch.zeros_like(count), count)
    g_usable = g_pids != JUNK_PID

    if chunk_size is None:
        chunk_size = _default_chunk(num_g, device)
    first_rank = torch.empty(num_q, dtype=torch.long, device=device)
    ap = torch.empty(num_q, dtype=torch.float64, device=device)
    inp = torch.empty(num_q, dtype=torch.float64, device=device)
    npos_all = torch.empty(num_q, dtype=torch.long, device=device)

    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        b = stop - start
        d = distmat[start:stop].to(work_dtype)
        # A sum is NaN if any entry is (or +inf meets -inf): one cheap read in the usual case.
        if torch.isnan(d.sum()) and torch.isnan(d).any():
            raise ValueError(f"distmat contains NaN (in query rows {start}..{stop - 1})")
        qp, qc = q_pids[start:stop], q_camids[start:stop]
        m = max(1, int(count[start:stop].max()))

        # Same-identity gallery items of each query, padded to m; keep those from other cameras.
        slot = torch.arange(m, device=device)
        in_range = slot[None, :] < count[start:stop, None]
        sorted_pos = (first[start:stop, None] + slot[None, :]).clamp_(max=num_g - 1)
        g_idx = g_order[sorted_pos]
        is_pos = in_range & (g_camids[g_idx] != qc[:, None])
        pos_d = torch.where(is_pos, d.gather(1, g_idx), torch.full_like(d[:, :1], float("inf")))
        # Padding is +inf, so it sorts after every finite match; only the first npos slots are
        # read, and which +inf fills them (a real one or padding) does not change their value.
        pos_d = torch.sort(pos_d, dim=1).values
        npos = is_pos.sum(1)

        # Only wrong matches (other identity, not junk) up to the farthest true match can move a
        # true match. For a trained model they are a small part of the gallery: gather just
        # those. When they are many (a weak model), search the whole chunk instead.
        farthest = pos_d.gather(1, (npos - 1).clamp(min=0)[:, None])
        farthest = torch.where(npos[:, None] > 0, farthest, torch.full_like(farthest, -float("inf")))
        close = d <= farthest
        pos_d = pos_d.contiguous()
        if int(close.sum()) > DENSE_ABOVE * close.numel():
            close &= g_pids[None, :] != qp[:, None]
            close &= g_usable[None, :]
            # Bucket i = number of true matches strictly closer, so a wrong match tied with
            # true match i is counted before it; bucket m collects what is left out.
            bucket = torch.searchsorted(pos_d, d.contiguous(), right=False)
            bucket = torch.where(close, bucket, m)
            rows = torch.arange(b, device=device)[:, None]
            counts = torch.bincount((rows * (m + 1) + bucket).reshape(-1), minlength=b * (m + 1))
        else:
            rows, cols = close.nonzero(as_tuple=True)
            # The identity test runs on this short list rather than on the whole chunk.
            keep = ((g_pids[cols] != qp[rows]) & g_usable[cols]).nonzero().squeeze(1)
            rows, cols = rows[keep], cols[keep]
            counts = torch.zeros(b * (m + 1), dtype=torch.long, device=device)
            if rows.numel():
                num_rel = torch.bincount(rows, minlength=b)
                # Pack each query's values to the front of its row for a batched search.
                pos = torch.arange(rows.numel(), device=device) - (num_rel.cumsum(0) - num_rel)[rows]
                packed = torch.full((b, int(num_rel.max())), float("inf"), dtype=d.dtype, device=device)
                packed[rows, pos] = d[rows, cols]
                bucket = torch.searchsorted(pos_d, packed, right=False)[rows, pos]
                counts = torch.bincount(rows * (m + 1) + bucket, minlength=b * (m + 1))
        hist = counts.view(b, m + 1)[:, :m]
        # 0-based position of the j-th true match in the list with junk removed.
        ranks = slot[None, :] + hist.cumsum(1)
        valid_slot = slot[None, :] < npos[:, None]

        j1 = (slot + 1).to(torch.float64)[None, :]
        r1 = (ranks + 1).to(torch.float64)
        precision = j1 / r1
        if ap_mode == "market":
            # Precision at the list position just before the hit; 1 at the very top.
            before = torch.where(ranks > 0, (j1 - 1) / (r1 - 1).clamp(min=1), torch.ones_like(r1))
            precision = 0.5 * (precision + before)
        denom = npos.clamp(min=1).to(torch.float64)
        ap[start:stop] = torch.where(valid_slot, precision, torch.zeros_like(precision)).sum(1) / denom
        last = ranks.gather(1, (npos - 1).clamp(min=0)[:, None]).squeeze(1)
        inp[start:stop] = npos.to(torch.float64) / (last + 1).to(torch.float64)
        first_rank[start:stop] = ranks[:, 0]
        npos_all[start:stop] = npos

    valid = npos_all > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError("no query has a true match in the gallery (same identity, another camera); "
                         "nothing can be scored")
    hits = torch.bincount(first_rank[valid].clamp(max=max_rank), minlength=max_rank + 1)[:max_rank]
    cmc = (hits.cumsum(0).to(torch.float64) / num_valid).cpu().numpy()
    ap = torch.where(valid, ap, torch.full_like(ap, float("nan")))
    return {
        "cmc": cmc,
        "mAP": float(ap[valid].mean()),
        "mINP": float(inp[valid].mean()),
        "num_valid_queries": num_valid,
        "num_queries": num_q,
        "ap": ap.cpu().numpy(),
    }
