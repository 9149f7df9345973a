"""Evaluating a model: features, the dataset's protocol, and learned metrics fitted first.

The protocol math (CMC/mAP, CUHK03 classic, re-ranking, distances, XQDA/KISSME) is in
``sharpattn.reid.metrics``; this package runs models to get the features it scores.
"""

from .evaluate import evaluate, extract_query_gallery
from .features import extract_features
from .metric_eval import evaluate_metrics, metrics_table, resolve_metric_names, uses_learned_metrics

__all__ = ["evaluate", "evaluate_metrics", "extract_features", "extract_query_gallery", "metrics_table",
           "resolve_metric_names", "uses_learned_metrics"]
