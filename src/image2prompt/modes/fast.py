"""Fast mode: the caption plus the best phrases of the merged table, truncated to fit."""

from __future__ import annotations

from ..features import Features
from ..prompt import fast_prompt
from ..results import Phrase
from .base import OnePromptMode, Scored, SearchContext, kept_phrases


def fast_candidate(ctx: SearchContext, feats: Features, caption: str, n: int, *,
                   list_rejected: bool = True) -> Scored:
    """The caption and the ``n`` best merged phrases; with the relevance floor on, the best ``n`` of those that clear
    it, and (``list_rejected``) the unfloored prompt's phrases that did not as ``rejected``."""
    tops = ctx.top_merged(feats, n, floored=True)
    full = fast_prompt(caption, [p.text for p in tops])
    prompt = ctx.truncate(full)
    rejected: list[Phrase] = []
    if ctx.settings.floor is not None and list_rejected:
        rejected = held_and_failing(ctx, feats, caption, ctx.top_merged(feats, n))
    return Scored(prompt, kept_phrases(full, prompt, tops, len(caption)), "fast", rejected)


def held_and_failing(ctx: SearchContext, feats: Features, caption: str, plain: list[Phrase]) -> list[Phrase]:
    """The phrases of the unfloored fast prompt (``caption`` and ``plain``, truncated) that fail
    the floor, without truncating it: phrase ``j`` is in that prompt exactly when the prompt
    through it fits, and that only gets harder as ``j`` grows, so bisecting over the failing
    phrases alone finds them (no tokenizer call at all when every phrase clears the floor)."""
    failing = [j for j, p in enumerate(plain) if not ctx.clears_floor(p, feats)]
    texts = [p.text for p in plain]
    lo, hi = -1, len(failing)  # failing[: lo + 1] are held; failing[hi:] are not
    first = True  # the failing phrases score lowest, so most often none is held: try the first alone
    while hi - lo > 1:
        mid, first = (0 if first else (lo + hi) // 2), False
        if ctx.fits(fast_prompt(caption, texts[: failing[mid] + 1])):
            lo = mid
        else:
            hi = mid
    return [plain[j] for j in failing[: lo + 1]]


class FastMode(OnePromptMode):
    name = "fast"

    def candidate(self, ctx: SearchContext, feats: Features) -> Scored:
        return fast_candidate(ctx, feats, feats.caption or "", ctx.settings.max_flavors)
