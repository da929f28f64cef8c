"""Style mode: only the aesthetic, no caption and no phrase that restates the subject.

The caption's direction is projected out of the image features, phrases that share the caption's content words or
whose embedding is close to the caption's are left out, and a chain starting at the best remaining phrase is searched
on what is left (docs/style.md). The similarity reported is to the image itself, comparable with the other modes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..features import Features
from ..prompt.subject import restates_subject, subject_words
from ..results import Phrase
from ..search import category_stats, pooled_spread, top_k_of_scores
from .base import SearchContext, Task, best_phrase_task, phrase

#: Phrases whose embedding is this close to the caption's restate the subject.
SUBJECT_COSINE = 0.95


def project_out(image: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Remove the caption's direction from the image features and renormalise."""
    d = direction / (np.linalg.norm(direction) or 1.0)
    v = image - float(image @ d) * d
    return (v / (np.linalg.norm(v) or 1.0)).astype(np.float32)


class StyleMode:
    name = "style"
    uses_caption = True

    def needs_caption(self, has_captioner: bool) -> bool:
        return has_captioner  # without a captioner, style runs on the image alone

    def plan(self, ctx: SearchContext, batch: Sequence[Features]) -> list[Task]:
        s = ctx.settings
        indexes = ctx.style_indexes()
        pack = indexes[0].pack
        tasks = []
        for feats in batch:
            caption = feats.caption
            cap = ctx.text_vectors(caption) if caption else None
            styled = feats.with_vectors([project_out(f, c) for f, c in zip(feats, cap)]) if cap else feats
            cap_feats = feats.with_vectors(cap) if cap else None
            subject = subject_words(caption or "")
            pool: list[Phrase] = []
            rejected: list[Phrase] = []
            # the style pack with the active pack's mediums, movements and artists, then the
            # active pack's own flavors (only their best `candidates`: a 100k table is mostly subject)
            tables: list[tuple[str, Any, int | None]] = [(c, indexes, None) for c in pack.categories()]
            if "flavors" in ctx.vocab and "flavors" not in pack:
                tables.append(("flavors", ctx.indexes, s.candidates))
            every = [ctx.table_scores(category, styled, where) for category, where, _ in tables]
            # support on the styled features, which style mode searches: in units of their spread
            # over every table it draws on (SearchContext.vocab_spread is the same for the others)
            spread = pooled_spread(every) or 1e-6
            for (category, where, limit), scores in zip(tables, every):
                near = ctx.table_scores(category, cap_feats, where) if cap_feats is not None else None
                labels = where[0].pack[category].labels
                median, std = category_stats(scores)
                rows = range(len(labels)) if limit is None else top_k_of_scores(scores, limit)[1]
                for i in rows:
                    label = labels[i]
                    if restates_subject(label, subject) or (near is not None and near[i] >= SUBJECT_COSINE):
                        continue
                    p = phrase(label, category, float(scores[i]))
                    p.margin = p.score - median
                    p.z = p.margin / std
                    p.support = p.margin / spread
                    (pool if s.floor is None or p.support >= s.floor else rejected).append(p)
            pool.sort(key=lambda p: -p.score)  # stable: table order breaks ties
            if rejected:  # of the phrases the unfloored search would start from, those kept out
                out = {id(p) for p in rejected}
                rejected = [p for p in sorted(pool + rejected, key=lambda p: -p.score)[: s.style_phrases]
                            if id(p) in out]
            tasks.append(best_phrase_task(ctx, styled, pool[: s.candidates], rejected, min_count=min(4, s.style_phrases),
                                          max_count=max(0, s.style_phrases - 1), score=True, indexes=indexes))
        return tasks
