"""Search: exact top-k and the phrase chain (numpy only)."""

from .chain import ChainResult, ChainState, ScoreExtensions, ScoreTexts, greedy_chain, start_chain
from .topk import DEFAULT_CHUNK_ROWS, similarities, top_k, top_k_of_scores

__all__ = [
    "DEFAULT_CHUNK_ROWS", "ChainResult", "ChainState", "start_chain", "ScoreExtensions", "ScoreTexts",
    "greedy_chain", "similarities", "top_k", "top_k_of_scores",
]
