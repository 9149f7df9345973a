"""Batch-hard triplet loss (Hermans, Beyer and Leibe, "In Defense of the Triplet Loss", 2017),
the metric loss of the SAN recipe, and the all-gather that lets several processes mine over the
whole global batch.

For every anchor in a batch of ``P x K`` images, the hardest positive is the farthest image of
the same identity and the hardest negative the closest image of another identity; the loss is
``max(0, margin + d(a, p) - d(a, n))`` (SAN: margin 0.5) or, with ``soft_margin``,
``log(1 + exp(d(a, p) - d(a, n)))``, averaged over the anchors.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["TripletStats", "aaa_adversarial_loss", "all_gather_with_grad",
           "attention_assignment_loss", "batch_hard_triplet_loss", "pairwise_distance"]


def pairwise_distance(x, y=None, squared=False):
    """Euclidean distances between the rows of ``x`` (N, D) and ``y`` (M, D) (default ``x``).

    Computed as ``|x|^2 + |y|^2 - 2 x.y`` in float32 at least, clamped at 1e-12 before the
    square root so that the zero self-distances have a finite (zero) gradient.
    """
    y = x if y is None else y
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    y = y.float() if y.dtype in (torch.float16, torch.bfloat16) else y
    d2 = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * (x @ y.t())
    d2 = d2.clamp_min(1e-12)
    return d2 if squared else d2.sqrt()


class TripletStats(dict):
    """What the loss saw: ``loss``, ``precision`` (fraction of anchors whose hardest negative is
    farther than their hardest positive), ``dist_ap`` and ``dist_an`` (batch means), as floats."""


def batch_hard_triplet_loss(embeddings, pids, margin=0.5, soft_margin=False, return_stats=False):
    """Batch-hard triplet loss over ``embeddings`` (N, D) with identities ``pids`` (N,).

    An anchor with no other image of its identity uses itself as the positive (distance 0); an
    anchor with no negative in the batch contributes no loss. Returns the mean over anchors, and
    with ``return_stats`` also a :class:`TripletStats`.
    """
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(embeddings.shape)}")
    pids = torch.as_tensor(pids, device=embeddings.device)
    if pids.shape != embeddings.shape[:1]:
        raise ValueError(f"pids {tuple(pids.shape)} do not match {embeddings.shape[0]} embeddings")
    if margin is not None and not soft_margin and margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    dist_mat = pairwise_distance(embeddings)
    same = pids.unsqueeze(0) == pids.unsqueeze(1)
    # Hardest positive: the largest distance among same-identity images (self included, at 0).
    dist_ap = dist_mat.masked_fill(~same, float("-inf")).amax(1)
    # Hardest negative: the smallest distance among other identities (+inf when there is none).
    dist_an = dist_mat.masked_fill(same, float("inf")).amin(1)
    has_neg = torch.isfinite(dist_an)
    diff = (dist_ap - dist_an).masked_fill(~has_neg, 0.0)
    if soft_margin:
        per_anchor = F.softplus(diff)
    else:
        per_anchor = (diff + margin).clamp_min(0)
    per_anchor = per_anchor.masked_fill(~has_neg, 0.0)
    loss = per_anchor.mean() if per_anchor.numel() else dist_mat.sum() * 0
    if not return_stats:
        return loss
    with torch.no_grad():
        stats = TripletStats(
            loss=float(loss),
            precision=float((dist_an > dist_ap).float().mean()) if len(pids) else 0.0,
            dist_ap=float(dist_ap.mean()) if len(pids) else 0.0,
            dist_an=float(dist_an[has_neg].mean()) if bool(has_neg.any()) else float("nan"),
        )
    return loss, stats


def _gather_padded(t, group=None):
    """All-gather tensors whose first dimension may differ between processes (no gradient)."""
    world = dist.get_world_size(group)
    n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    sizes = [int(s) for s in sizes]
    biggest = max(sizes)
    padded = t.new_zeros((biggest,) + tuple(t.shape[1:]))
    padded[:t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return [p[:s] for p, s in zip(parts, sizes)]


def all_gather_with_grad(tensor, group=None):
    """Concatenate ``tensor`` (N_r, ...) from every process, in rank order.

    The slice of this process is ``tensor`` itself, so gradients of anything computed from the
    result flow back to this process's own samples (the other slices are constants here; their
    owners compute the same loss and get the gradients of their own samples). Without an
    initialised process group it returns ``tensor``.

    Under DistributedDataParallel, which averages gradients over processes, a loss computed on
    the gathered batch must be multiplied by the world size before ``backward`` to get the
    gradient of that loss (see :func:`sharpattn.reid.recipes.san.compute_loss`).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return tensor
    parts = _gather_padded(tensor.detach(), group)
    parts[dist.get_rank(group)] = tensor
    return torch.cat(parts)


# --------------------------------------------------------------------------------------------
# AAA-Net (Attention-Aware Adversarial Network), eq. 1-4: per-sample values, L1 norms taken over
# each sample's whole map. See docs/aaanet.md for what M_att and M_occ are in sharpattn.
# --------------------------------------------------------------------------------------------

def _aaa_maps(m_att, m_occ):
    """Check two per-sample maps (N, ...) of one shape; return them flattened to (N, h*w), in
    float32 at least (sums over a 56 x 56 map overflow bfloat16's precision)."""
    if not isinstance(m_att, torch.Tensor) or not isinstance(m_occ, torch.Tensor):
        raise TypeError("m_att and m_occ must be tensors")
    if m_att.dim() < 2:
        raise ValueError("m_att must be a per-sample map (N, h, w), got shape "
                         f"{tuple(m_att.shape)}")
    if m_att.shape != m_occ.shape:
        raise ValueError(f"m_att {tuple(m_att.shape)} and m_occ {tuple(m_occ.shape)} must have "
                         "the same shape")
    if m_att.shape[0] == 0:
        raise ValueError("m_att has no samples (N = 0)")
    dtype = torch.promote_types(m_att.dtype, torch.float32)
    return m_att.flatten(1).to(dtype), m_occ.flatten(1).to(dtype)


def _assignment_terms(m_att, m_occ):
    """(L_r, L_att) per sample: eq. 3 and eq. 2."""
    att, occ = _aaa_maps(m_att, m_occ)
    # Eq. 2, L_att = || (max(M_att, 0) - M_occ) * M_att ||_1
    l_att = ((att.clamp_min(0) - occ) * att).abs().sum(1)
    # Eq. 3, L_r = log(1 + exp(-||M_att||_1)) = softplus(-||M_att||_1): no overflow for any norm
    l_r = F.softplus(-att.abs().sum(1))
    return l_r, l_att


def attention_assignment_loss(m_att, m_occ):
    """AAA-Net eq. 1 per sample, shape (N,): ``L_att(M_att, M_occ) + L_r(M_att)`` with
    ``L_att = ||(max(M_att, 0) - M_occ) * M_att||_1`` (eq. 2) and
    ``L_r = log(1 + exp(-||M_att||_1))`` (eq. 3), both norms over each sample's map.

    ``m_att`` and ``m_occ`` are (N, h, w) (any (N, ...) of one shape works). ``m_occ`` is a
    target: pass it detached unless its gradient is wanted.
    """
    l_r, l_att = _assignment_terms(m_att, m_occ)
    return l_att + l_r


def aaa_adversarial_loss(m_att, m_occ, p_bf, p_af, lambda1=0.3, lambda2=1.7, omega=0.04):
    """AAA-Net eq. 4 per sample, shape (N,): ``lambda1 * L_r + lambda2 * L_att`` where
    ``p_bf - p_af > omega``, exactly 0 elsewhere (the gate is strict: a difference equal to
    omega gives 0).

    ``p_bf`` and ``p_af`` (N,) are the probabilities of the true identity before and after
    occluding the feature map; they only gate (no gradient flows through the comparison).
    """
    l_r, l_att = _assignment_terms(m_att, m_occ)
    n = l_r.shape[0]
    p_bf, p_af = torch.as_tensor(p_bf), torch.as_tensor(p_af)
    for name, p in (("p_bf", p_bf), ("p_af", p_af)):
        if p.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) (one probability per sample), "
                             f"got {tuple(p.shape)}")
    gate = (p_bf.detach().to(l_r.device) - p_af.detach().to(l_r.device)) > omega
    loss = lambda1 * l_r + lambda2 * l_att
    return torch.where(gate, loss, torch.zeros_like(loss))
