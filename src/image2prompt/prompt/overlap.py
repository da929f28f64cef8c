"""What a caption already says: a vocabulary phrase in the caption's own words.

A vision-language model's caption often names the medium, the lighting or the style
itself ("a watercolor painting of a fox in soft morning light"); the CLIP-ranked phrases
after it should not say it again. :func:`says` finds a phrase whose every content word
is in the caption (plurals folded); :func:`clauses` cuts the caption into the clauses
whose text embeddings the search compares phrases with, for near-duplicates in other
words. Pure text: no model, no torch.
"""

from __future__ import annotations

import re

__all__ = ["clauses", "content_words", "says"]

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an the of in on at and with to by for from its it is are this that as or into over under "
                  "very".split())
_CLAUSE = re.compile(r"[.;:!?,]|\band\b|\bwith\b")


def _fold(word: str) -> str:
    """A plural as its singular, roughly (foxes, skies, dresses, trees; not glass, bus, iris)."""
    if len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("xes", "ches", "shes", "sses", "zes")):
        return word[:-2]
    return word[:-1] if word.endswith("s") and not word.endswith(("ss", "us", "is")) else word


def content_words(text: str) -> frozenset[str]:
    """The words of ``text`` that carry meaning, lower case, plurals folded."""
    return frozenset(_fold(w) for w in _WORD.findall(text.lower()) if w not in _STOP)


def says(caption_words: frozenset[str], phrase: str) -> bool:
    """Whether the caption (its :func:`content_words`) already says every content word of ``phrase``."""
    words = content_words(phrase)
    return bool(words) and words <= caption_words


def clauses(caption: str, limit: int = 12) -> list[str]:
    """The caption's clauses (cut at punctuation, "and", "with"), at most ``limit``, each with a content word."""
    out = [c.strip() for c in _CLAUSE.split(caption) if content_words(c)]
    return out[:limit]
