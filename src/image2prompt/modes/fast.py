"""Fast mode: the caption plus the best phrases of the merged table, truncated to fit."""

from __future__ import annotations

from ..features import Features
from ..prompt import fast_prompt
from .base import OnePromptMode, Scored, SearchContext, kept_phrases


def fast_candidate(ctx: SearchContext, feats: Features, caption: str, n: int) -> Scored:
    tops = ctx.top_merged(feats, n)
    full = fast_prompt(caption, [p.text for p in tops])
    prompt = ctx.truncate(full)
    return Scored(prompt, kept_phrases(full, prompt, tops, len(caption)), "fast")


class FastMode(OnePromptMode):
    name = "fast"

    def candidate(self, ctx: SearchContext, feats: Features) -> Scored:
        return fast_candidate(ctx, feats, feats.caption or "", ctx.settings.max_flavors)
