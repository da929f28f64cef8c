"""Prompt assembly and token-budget handling (no torch here)."""

from .assemble import (
    DEFAULT_MAX_TOKENS,
    SEPARATOR,
    CountTokens,
    at_limit,
    classic_prompt,
    cut_caption_to_fit,
    cut_to_fit,
    fast_prompt,
    fits,
    split_into_chunks,
    text_budget,
    truncate_to_fit,
)
from .caption import clean_caption

__all__ = [
    "DEFAULT_MAX_TOKENS", "SEPARATOR", "CountTokens", "at_limit", "classic_prompt", "clean_caption", "cut_caption_to_fit",
    "cut_to_fit",
    "fast_prompt", "fits", "split_into_chunks", "text_budget", "truncate_to_fit",
]
