"""Query x gallery distances, computed block by block on the features' device."""

from __future__ import annotations

import torch

__all__ = ["compute_distance_matrix", "METRICS"]

METRICS = ("euclidean", "sqeuclidean", "cosine")


def _rows_per_block(num_gallery, dim, device, budget_bytes):
    # A block holds its float32 distances plus, for a GPU matmul, the operands; stay under budget.
    per_row = 4 * (num_gallery + dim)
    return max(1, budget_bytes // per_row)


def compute_distance_matrix(qf, gf, metric="euclidean", block_bytes=None, out=None):
    """Distances between rows of ``qf`` (m, d) and ``gf`` (n, d): a float32 (m, n) tensor on
    ``qf``'s device.

    ``metric``: ``"euclidean"`` (L2 distance), ``"sqeuclidean"`` (its square: ranks the same,
    cheaper), or ``"cosine"`` (1 - cosine similarity, in [0, 2]). Queries are processed in
    blocks of about ``block_bytes`` (64 MiB on the CPU, 512 MiB on a GPU), so the temporary
    memory beyond the result stays bounded; pass ``out`` (a float32 (m, n) tensor, e.g. on
    the CPU or memory-mapped) to write the result there instead of a new tensor.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    qf, gf = torch.as_tensor(qf), torch.as_tensor(gf)
    if qf.dim() != 2 or gf.dim() != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"features must be (m, d) and (n, d) with the same d, got "
                         f"{tuple(qf.shape)} and {tuple(gf.shape)}")
    device = qf.device
    gf = gf.to(device)
    # Accumulate in float32 at least (half-precision dot products lose the small differences
    # that separate near neighbours).
    work = torch.float64 if qf.dtype == torch.float64 or gf.dtype == torch.float64 else torch.float32
    qf, gf = qf.to(work), gf.to(work)
    m, n = qf.shape[0], gf.shape[0]
    if out is None:
        out = torch.empty((m, n), dtype=torch.float32, device=device)
    elif out.shape != (m, n):
        raise ValueError(f"out must have shape {(m, n)}, got {tuple(out.shape)}")
    if block_bytes is None:
        block_bytes = (64 << 20) if device.type == "cpu" else (512 << 20)
    rows = _rows_per_block(n, qf.shape[1], device, block_bytes)

    if metric == "cosine":
        gn = torch.nn.functional.normalize(gf, dim=1)
    else:
        g_sq = gf.pow(2).sum(1)
    for s in range(0, m, rows):
        q = qf[s:s + rows]
        if metric == "cosine":
            block = 1 - torch.nn.functional.normalize(q, dim=1) @ gn.T
        else:
            # |q|^2 + |g|^2 - 2 q.g, clamped: rounding can make it slightly negative.
            block = torch.addmm(q.pow(2).sum(1, keepdim=True) + g_sq, q, gf.T, alpha=-2).clamp_(min=0)
            if metric == "euclidean":
                block.sqrt_()
        out[s:s + rows].copy_(block)
    return out
