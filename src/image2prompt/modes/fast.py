"""Fast mode: the caption plus the best phrases of the merged table, truncated to fit."""

from __future__ import annotations

from ..features import Features
from ..prompt import fast_prompt
from .base import OnePromptMode, Scored, SearchContext, kept_phrases


def fast_candidate(ctx: SearchContext, feats: Features, caption: str, n: int) -> Scored:
    """The caption and the ``n`` best merged phrases; with the relevance floor on, the best
    ``n`` of those that clear it, and the unfloored prompt's phrases that did not as ``rejected``."""
    tops = ctx.top_merged(feats, n, floored=True)
    full = fast_prompt(caption, [p.text for p in tops])
    prompt = ctx.truncate(full)
    rejected: list = []
    if ctx.settings.floor is not None:
        plain = ctx.top_merged(feats, n)
        plain_full = fast_prompt(caption, [p.text for p in plain])
        used = kept_phrases(plain_full, ctx.truncate(plain_full), plain, len(caption))
        rejected = [p for p in used if not ctx.clears_floor(p, feats)]
    return Scored(prompt, kept_phrases(full, prompt, tops, len(caption)), "fast", rejected)


class FastMode(OnePromptMode):
    name = "fast"

    def candidate(self, ctx: SearchContext, feats: Features) -> Scored:
        return fast_candidate(ctx, feats, feats.caption or "", ctx.settings.max_flavors)
