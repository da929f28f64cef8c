"""Classic mode: the reference's fixed layout, ``caption, medium by artist, trending, movement, flavors``."""

from __future__ import annotations

from ..features import Features
from ..prompt import classic_prompt
from .base import OnePromptMode, Scored, SearchContext, kept_phrases


def classic_candidate(ctx: SearchContext, feats: Features, caption: str, n_flavors: int) -> Scored:
    medium = ctx.top("mediums", feats, 1)[0]
    artist = ctx.top("artists", feats, 1)[0]
    trending = ctx.top("trendings", feats, 1)[0]
    movement = ctx.top("movements", feats, 1)[0]
    flavors = ctx.top("flavors", feats, n_flavors)
    full = classic_prompt(caption, medium.text, artist.text, trending.text, movement.text,
                          [f.text for f in flavors])
    prompt = ctx.truncate(full)
    return Scored(prompt, kept_phrases(full, prompt, [medium, artist, trending, movement, *flavors], len(caption)),
                  "classic")


class ClassicMode(OnePromptMode):
    name = "classic"

    def candidate(self, ctx: SearchContext, feats: Features) -> Scored:
        return classic_candidate(ctx, feats, feats.caption or "", ctx.settings.classic_flavors)
