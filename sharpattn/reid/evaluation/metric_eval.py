"""Evaluation with learned metrics: ``sharpattn-eval --metric ...`` and ``eval.metrics``.

The model embeds the query, the gallery and the training split (with the test transform, as
the test images); every requested metric is fitted on the training split's features and scores
the query x gallery distances with the dataset's protocol (optionally re-ranked), giving one
row per metric. Query and gallery are embedded once for all rows. The top-level numbers stay
those of ``eval.metric`` (the distance every evaluation during training uses, so best-epoch
choices stay comparable); the rows are under ``"by_metric"``.

Training features can be cached: ``sharpattn-eval`` keeps them in ``<run>/eval_cache/``, keyed
by the checkpoint file's SHA-256, the dataset and the test transform, so a second evaluation of
the same checkpoint (another metric, re-ranking on or off) does not embed the training split
again. Each fitted metric is saved beside the results as ``metric_<name>.pt`` (its
``state_dict()``, plus ``fitted_on``), loadable with ``metric_from_state_dict(torch.load(...))``.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ..config import ConfigError
from ..data import eval_loader
from ..metrics.learned import LEARNED_METRICS, build_metric
from .evaluate import evaluate, extract_query_gallery
from .features import extract_features

__all__ = ["METRIC_NAMES", "resolve_metric_names", "uses_learned_metrics", "evaluate_metrics",
           "train_features", "file_digest", "metrics_table"]

METRIC_NAMES = tuple(LEARNED_METRICS)  # euclidean, xqda, kissme
ROW_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP", "cmc", "metric", "rerank")


def resolve_metric_names(spec):
    """``"all"``, ``"xqda"``, ``"euclidean,kissme"`` or a list of names -> list of names."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = []
    for item in (str(i).strip().lower() for i in items):
        for name in (METRIC_NAMES if item == "all" else (item,)):
            if name not in METRIC_NAMES:
                raise ConfigError(f"unknown metric {name!r}: choose from {', '.join(METRIC_NAMES)} or all")
            if name not in names:
                names.append(name)
    if not names:
        raise ConfigError("no metric given: choose from " + ", ".join(METRIC_NAMES) + " or all")
    return names


def uses_learned_metrics(cfg):
    """Whether ``eval.metrics`` asks for more than the plain Euclidean evaluation."""
    return list(cfg.eval.metrics) != ["euclidean"]


def file_digest(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fingerprint(cfg, dataset, ten_crop, model_digest):
    return {"model": model_digest, "dataset": cfg.data.name, "root": str(Path(cfg.data.root).expanduser()),
            "cuhk03": [cfg.data.cuhk03_protocol, cfg.data.cuhk03_split], "num_train": len(dataset.train),
            "ten_crop": bool(ten_crop), "size": [cfg.data.height, cfg.data.width]}


def train_features(model, dataset, cfg, device, ten_crop, progress=True, amp_ctx=None, cache_dir=None,
                   model_digest=None, log=print):
    """``(features, pids, camids)`` of ``dataset.train`` embedded with the test transform.

    With ``cache_dir`` and ``model_digest`` (a string that changes with the weights, e.g. the
    checkpoint's :func:`file_digest`), they are read from / written to
    ``cache_dir/eval_cache/train-<key>.pt``; a file for other weights, data or transform is
    never used.
    """
    fp = path = None
    if cache_dir is not None and model_digest is not None:
        fp = _fingerprint(cfg, dataset, ten_crop, model_digest)
        key = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(cache_dir) / "eval_cache" / f"train-{key}.pt"
        if path.is_file():
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.get("fingerprint") == fp:
                log(f"training-split features from the cache {path}")
                return cached["features"].to(device), cached["pids"], cached["camids"]
    with amp_ctx if amp_ctx is not None else nullcontext():
        feats, pids, camids = extract_features(model, eval_loader(dataset.train, cfg, ten_crop), device, progress)
    feats = feats.float()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"fingerprint": fp, "features": feats.cpu(), "pids": pids, "camids": camids}, tmp)
        tmp.replace(path)
    return feats, pids, camids


def evaluate_metrics(model, dataset, cfg, device, names, progress=True, ten_crop=None, rerank=None,
                     amp_ctx=None, cache_dir=None, model_digest=None, save_dir=None, log=print):
    """Evaluate with each metric in ``names``; returns ``(metrics, distmat)`` like
    :func:`sharpattn.reid.evaluation.evaluate` (for ``eval.metric``), with ``metrics["by_metric"]``
    holding one entry per name (rank-1/5/10, mAP, mINP, CMC, fit time, what the fit found)."""

    names = resolve_metric_names(names)
    ten_crop = cfg.eval.ten_crop if ten_crop is None else ten_crop
    rerank = cfg.eval.rerank if rerank is None else rerank
    features = extract_query_gallery(model, dataset, cfg, device, progress, ten_crop, amp_ctx)
    common = dict(progress=progress, ten_crop=ten_crop, rerank=rerank, features=features)
    primary, distmat = evaluate(model, dataset, cfg, device, **common)
    train = None
    if any(n != "euclidean" for n in names):
        train = train_features(model, dataset, cfg, device, ten_crop, progress, amp_ctx, cache_dir, model_digest,
                               log=log)
    rows = {}
    for name in names:
        if name == "euclidean" and cfg.eval.metric in ("euclidean", "sqeuclidean"):
            row, info, seconds = primary, {}, 0.0  # the same ranking as the squared distance
        else:
            metric = build_metric(name)
            t0 = time.perf_counter()
            try:
                metric.fit(*(train if train is not None else (features[0][0],)), progress=progress)
            except ValueError as e:  # e.g. too few training images for KISSME's PCA
                raise ConfigError(f"{name} cannot be fitted on {cfg.data.name}'s training split ({e}); leave it "
                                  f"out with --metric / eval.metrics") from e
            seconds = time.perf_counter() - t0
            row, _ = evaluate(model, dataset, cfg, device, metric=metric, **common)
            info = {k: v for k, v in metric.info.items() if k != "eigenvalues"}
            if save_dir is not None and name != "euclidean":
                state = metric.state_dict()
                state["fitted_on"] = {"model": model_digest, "dataset": cfg.data.name,
                                      "num_train": len(dataset.train), "ten_crop": bool(ten_crop)}
                Path(save_dir).mkdir(parents=True, exist_ok=True)
                torch.save(state, Path(save_dir) / f"metric_{name}.pt")
        rows[name] = {**{k: row[k] for k in ROW_KEYS if k in row}, "metric": name, "fit_seconds": seconds,
                      "fit_info": info}
        log(f"{name}: rank-1 {100 * row['rank1']:.1f} mAP {100 * row['mAP']:.1f}"
            + (f" (fitted in {seconds:.1f} s)" if name != "euclidean" else ""))
    primary["by_metric"] = rows
    return primary, distmat


def metrics_table(name, metrics):
    """Markdown table: one row per metric when ``metrics`` has ``by_metric``, else one row."""
    from ..report.summary import format_metrics_table
    rows = metrics.get("by_metric") if metrics else None
    if not rows:
        return format_metrics_table([(name, metrics)])
    return format_metrics_table([(f"{name} ({m})", r) for m, r in rows.items()])
