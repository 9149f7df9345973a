"""Evaluation of re-ID rankings: protocol scoring, distances, re-ranking, ranked-list pictures."""

from .cuhk03 import evaluate_cuhk03_classic
from .distance import METRICS, compute_distance_matrix
from .rank import AP_MODES, evaluate_rank
from .rerank import re_ranking

__all__ = ["AP_MODES", "METRICS", "compute_distance_matrix", "evaluate_cuhk03_classic",
           "evaluate_rank", "re_ranking"]
