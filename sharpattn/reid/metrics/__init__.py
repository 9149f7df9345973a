"""Evaluation of re-ID rankings: protocol scoring, distances, re-ranking, ranked-list pictures."""

from .distance import METRICS, compute_distance_matrix
from .rank import AP_MODES, evaluate_rank
from .rerank import re_ranking

__all__ = ["AP_MODES", "METRICS", "compute_distance_matrix", "evaluate_rank", "re_ranking"]
