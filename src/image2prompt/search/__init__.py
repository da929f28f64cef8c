"""Search: exact top-k, the phrase chain and the confidence figures (numpy only)."""

from .chain import ChainResult, ChainState, ScoreTexts, start_chain
from .confidence import (
    category_stats,
    chance_max_z,
    emphasis_weight,
    match_strength,
    pooled_spread,
    weak_match,
    weak_threshold,
)
from .topk import similarities, top_k_of_scores

__all__ = [
    "ChainResult", "ChainState", "ScoreTexts", "category_stats", "chance_max_z", "emphasis_weight",
    "match_strength", "pooled_spread", "similarities", "start_chain", "top_k_of_scores", "weak_match", "weak_threshold",
]
