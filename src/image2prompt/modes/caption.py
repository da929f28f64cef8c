"""Caption mode: the captioner's text alone, cut to the token budget where a clause ends.

For training captions (kohya sidecars): a VLM's description without CLIP's phrases, with
the budget, the answer cleaning and the resume of every other mode. Its similarity is
scored where the output shows it, like fast and classic.
"""

from __future__ import annotations

from ..features import Features
from .base import OnePromptMode, Scored, SearchContext


class CaptionMode(OnePromptMode):
    name = "caption"

    def candidate(self, ctx: SearchContext, feats: Features) -> Scored:
        return Scored(feats.caption or "", [], "caption")  # already fitted to the budget by the orchestrator
