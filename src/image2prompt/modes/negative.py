"""Negative mode: a chain of the least similar flavors and negative terms, for a negative prompt."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from ..features import Features
from .base import SearchContext, Task, chain_from_best_phrase, chain_outcome, phrase, with_rejected


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
            by_text, chain = chain_from_best_phrase(ctx, feats, pool, min_count=s.min_flavors,
                                                    max_count=s.max_flavors, reverse=True)
            tasks.append(Task([chain] if chain else [],
                              partial(lambda b, c, r: with_rejected(chain_outcome(b, c, score=False), r),
                                      by_text, chain, rejected)))
        return tasks
