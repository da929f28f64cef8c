"""Style mode's text rules: which words of a caption name the subject (pure string work).

English-only: the stop list and the plural rule are English.
"""

from __future__ import annotations

import re

_STOP = frozenset("""a an the of on in with and at to by for from its his her their is are there this that
these those some two three one very next front side top bottom background foreground close up view shot
photo photograph picture image painting drawing illustration art style render sitting standing""".split())

_WORD = re.compile(r"[a-z][a-z'-]+")


def subject_words(caption: str) -> frozenset[str]:
    """Content words of a caption (lowercase, naive singular), excluding generic and style words."""
    words = _WORD.findall(caption.lower())
    return frozenset(singular(w) for w in words if len(w) >= 3 and w not in _STOP)


def restates_subject(phrase: str, subject: frozenset[str]) -> bool:
    """Whether the phrase repeats one of the subject's words."""
    return any(singular(w) in subject for w in _WORD.findall(phrase.lower()))


def singular(word: str) -> str:
    if len(word) <= 3 or not word.endswith("s") or word.endswith("ss"):
        return word
    if word.endswith(("xes", "shes", "ches", "sses", "zes")):
        return word[:-2]
    if word.endswith("ies"):
        return word[:-3] + "y"
    return word[:-1]
