"""Evaluation of re-ID rankings: protocol scoring, distances, re-ranking, ranked-list pictures."""

from .rank import AP_MODES, evaluate_rank

__all__ = ["AP_MODES", "evaluate_rank"]
