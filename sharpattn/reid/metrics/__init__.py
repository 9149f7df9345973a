"""Evaluation of re-ID rankings: protocol scoring, distances, learned metrics, re-ranking."""

from .cuhk03 import evaluate_cuhk03_classic
from .distance import METRICS, compute_distance_matrix
from .learned import (KISSME, LEARNED_METRICS, XQDA, Euclidean, build_metric, metric_distances,
                      metric_from_state_dict)
from .rank import AP_MODES, evaluate_rank
from .rerank import re_ranking

__all__ = ["AP_MODES", "Euclidean", "KISSME", "LEARNED_METRICS", "METRICS", "XQDA", "build_metric",
           "compute_distance_matrix", "evaluate_cuhk03_classic", "evaluate_rank", "metric_distances",
           "metric_from_state_dict", "re_ranking"]
