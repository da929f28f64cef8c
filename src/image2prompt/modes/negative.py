"""Negative mode: a chain of the least similar flavors and negative terms, for a negative prompt."""

from __future__ import annotations

from collections.abc import Sequence

from ..features import Features
from .base import SearchContext, Task, best_phrase_task, phrase


class NegativeMode:
    name = "negative"
    uses_caption = False

    def needs_caption(self, has_captioner: bool) -> bool:
        return False

    def plan(self, ctx: SearchContext, batch: Sequence[Features]) -> list[Task]:
        s = ctx.settings
        tasks = []
        for feats in batch:
            pool = ctx.top("flavors", feats, s.candidates, largest=False)
            rejected: list = []
            if s.floor is not None:  # mirrored: a flavor must stand below its table's median by the floor
                pool, out = ctx.split_floor(pool, feats, below=True)
                rejected = out[: s.max_flavors]  # the least similar first, as the pool is ordered
            if "negative" in ctx.vocab:  # the negative list is generic by design: it is not floored
                scores = ctx.table_scores("negative", feats)
                pool += [phrase(t, "negative", float(v)) for t, v in zip(ctx.vocab["negative"].labels, scores)]
            tasks.append(best_phrase_task(ctx, feats, pool, rejected, min_count=s.min_flavors, max_count=s.max_flavors,
                                          score=False, reverse=True))
        return tasks
