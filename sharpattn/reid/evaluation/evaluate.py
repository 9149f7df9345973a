"""Score a model on a dataset's query and gallery with the dataset's protocol."""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import numpy as np

from ..data import eval_loader
from ..datasets import DatasetFormatError
from ..datasets.check import SHOWN, UnreadableImageWarning
from ..metrics import compute_distance_matrix, evaluate_cuhk03_classic, evaluate_rank, re_ranking
from ..metrics.learned import metric_distances
from .features import extract_features

__all__ = ["evaluate", "extract_query_gallery"]


def extract_query_gallery(model, dataset, cfg, device, progress=True, ten_crop=None, amp_ctx=None):
    """``((qf, qp, qc), (gf, gp, gc))``: features, identities and cameras of query and gallery.

    A query or gallery image that cannot be read (it broke after the check of
    :func:`~sharpattn.reid.data.build_dataset`) is dropped from this evaluation and from
    ``dataset.query`` / ``dataset.gallery`` themselves, so the features, the lists and the ranked
    lists drawn from them stay aligned, with one warning naming the files.
    """
    ten_crop = cfg.eval.ten_crop if ten_crop is None else ten_crop
    out = []
    with amp_ctx if amp_ctx is not None else nullcontext():
        for split in ("query", "gallery"):
            items, dropped = getattr(dataset, split), []
            if not items:
                raise DatasetFormatError(f"no {split} images to evaluate in {getattr(dataset, 'name', 'the dataset')}")
            try:
                out.append(extract_features(model, eval_loader(items, cfg, ten_crop), device, progress, dropped))
            except OSError:
                if len(dropped) < len(items):
                    raise
            if dropped:
                shown = "; ".join(f"{p}: {r}" for _, p, r in dropped[:SHOWN])
                more = f"; and {len(dropped) - SHOWN} more" if len(dropped) > SHOWN else ""
                if len(dropped) >= len(items):
                    raise DatasetFormatError(f"none of the {len(items)} {split} images can be read: {shown}{more}")
                lost = {int(i) for i, _, _ in dropped}
                setattr(dataset, split, [it for i, it in enumerate(items) if i not in lost])
                warnings.warn(f"dropped {len(lost)} unreadable {split} image(s) from the evaluation (with their "
                              f"identities and cameras; {len(items) - len(lost)} left): {shown}{more}",
                              UnreadableImageWarning, stacklevel=2)
    return out


def evaluate(model, dataset, cfg, device, progress=True, ten_crop=None, rerank=None, amp_ctx=None,
             metric=None, features=None):
    """Embed query and gallery, score them with the dataset's protocol.

    Returns ``(metrics, distmat)``; ``metrics`` has ``rank1``, ``rank5``, ``rank10``, ``mAP``,
    ``mINP`` (fractions), ``cmc`` (list), the protocol and the options used. ``metric``: a
    fitted learned metric (``sharpattn.reid.XQDA`` ...) instead of ``eval.metric``;
    ``features``: ``((qf, qp, qc), (gf, gp, gc))`` already extracted (see ``metric_eval``).
    """
    ten_crop = cfg.eval.ten_crop if ten_crop is None else ten_crop
    rerank = cfg.eval.rerank if rerank is None else rerank
    if features is None:
        features = extract_query_gallery(model, dataset, cfg, device, progress, ten_crop, amp_ctx)
    (qf, qp, qc), (gf, gp, gc) = features
    qf, gf = qf.float(), gf.float()
    if metric is not None:
        distmat = metric_distances(metric, qf, gf, rerank=rerank, progress=progress)
    elif rerank:
        distmat = re_ranking(qf, gf, progress=progress)
    else:
        distmat = compute_distance_matrix(qf, gf, metric=cfg.eval.metric)
    if cfg.data.name.startswith("cuhk03") and cfg.data.cuhk03_protocol == "classic":
        r = evaluate_cuhk03_classic(distmat, qp, gp, qc, gc)
        protocol = "cuhk03 classic (single gallery shot, 20 draws)"
    else:
        r = evaluate_rank(distmat, qp, gp, qc, gc, ap_mode=cfg.eval.ap_mode)
        protocol = f"Market-1501 style, {cfg.eval.ap_mode} AP"
    cmc = np.asarray(r["cmc"], dtype=float)
    metrics = {"rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]),
               "rank10": float(cmc[min(9, len(cmc) - 1)]), "mAP": float(r["mAP"]),
               "mINP": float(r["mINP"]), "cmc": [float(c) for c in cmc[:20]],
               "protocol": protocol, "ten_crop": bool(ten_crop), "rerank": bool(rerank),
               "metric": cfg.eval.metric if metric is None else metric.name,
               "num_query": len(dataset.query), "num_gallery": len(dataset.gallery)}
    return metrics, distmat
