"""Fast mode: the caption plus the best phrases of the merged table, truncated to fit."""

from __future__ import annotations

from typing import Sequence

from ..features import Features
from ..prompt import fast_prompt
from .base import Outcome, Scored, SearchContext, Task, kept_phrases


def fast_candidate(ctx: SearchContext, feats: Features, caption: str, n: int) -> Scored:
    tops = ctx.top_merged(feats, n)
    full = fast_prompt(caption, [p.text for p in tops])
    prompt = ctx.truncate(full)
    return Scored(prompt, kept_phrases(full, prompt, tops, len(caption)), "fast")


class FastMode:
    name = "fast"
    uses_caption = True

    def needs_caption(self, has_captioner: bool) -> bool:
        return True

    def plan(self, ctx: SearchContext, batch: Sequence[Features]) -> list[Task]:
        n, score = ctx.settings.max_flavors, ctx.settings.score_prompt
        out = []
        for feats in batch:
            scored = fast_candidate(ctx, feats, feats.caption or "", n)
            out.append(Task([], lambda s=scored: Outcome([s], score=score)))
        return out
