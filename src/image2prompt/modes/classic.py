"""Classic mode: the reference's fixed layout, ``caption, medium by artist, trending, movement, flavors``."""

from __future__ import annotations

from ..features import Features
from ..prompt import classic_prompt
from .base import OnePromptMode, Scored, SearchContext, kept_phrases


def classic_candidate(ctx: SearchContext, feats: Features, caption: str, n_flavors: int, *,
                      list_rejected: bool = True) -> Scored:
    """The reference's layout. With the relevance floor on, a part whose best phrase does not
    clear the floor is left out, the flavors are the best that clear it, and (``list_rejected``)
    the unfloored prompt's phrases that did not are ``rejected``."""
    parts = [ctx.top(c, feats, 1)[0] for c in ("mediums", "artists", "trendings", "movements")]
    if ctx.settings.floor is None:
        return _assemble(ctx, caption, parts, ctx.top("flavors", feats, n_flavors))
    kept = [p if ctx.clears_floor(p, feats) else None for p in parts]
    floored = _assemble(ctx, caption, kept, ctx.top("flavors", feats, n_flavors, floored=True), joined=True)
    if list_rejected:
        plain = _assemble(ctx, caption, parts, ctx.top("flavors", feats, n_flavors))
        floored.rejected = [p for p in plain.phrases if not ctx.clears_floor(p, feats)]
    return floored


def _assemble(ctx: SearchContext, caption: str, parts: list, flavors: list, joined: bool = False) -> Scored:
    medium, artist, trending, movement = (p.text if p is not None else None for p in parts)
    full = classic_prompt(caption, medium, artist, trending, movement, [f.text for f in flavors], joined=joined)
    prompt = ctx.truncate(full)
    return Scored(prompt, kept_phrases(full, prompt, [p for p in parts if p is not None] + list(flavors),
                                       len(caption)), "classic")


class ClassicMode(OnePromptMode):
    name = "classic"

    def candidate(self, ctx: SearchContext, feats: Features) -> Scored:
        return classic_candidate(ctx, feats, feats.caption or "", ctx.settings.classic_flavors)
