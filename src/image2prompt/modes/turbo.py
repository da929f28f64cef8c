"""Turbo mode: best mode's chain on a smaller pool, searched lazily (Minoux's lazy greedy; the
``shortlist``, ``max_rounds``, ``refresh_every`` and ``keep`` settings): see :class:`image2prompt.search.ChainState`.
"""

from __future__ import annotations

from .base import SearchContext
from .best import BestMode


class TurboMode(BestMode):
    name = "turbo"

    def pool_size(self, ctx: SearchContext) -> int:
        return min(ctx.settings.candidates, ctx.settings.turbo_pool)

    def chain_options(self, ctx: SearchContext) -> dict[str, object]:
        s = ctx.settings
        return {"shortlist": s.shortlist, "refresh_every": s.refresh_every, "max_rounds": s.max_rounds,
                "keep": s.keep}
