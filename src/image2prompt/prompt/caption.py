"""Caption clean-up (pure string work, no torch)."""

from __future__ import annotations

import re
import unicodedata

# BLIP trained on LAION alt-text invents "arafed"/"araffe" and similar non-words.
_ARAFED = re.compile(r"\bara+f+(?:e|ed|es|fe|fed|y)?\b\s*", re.IGNORECASE)
_REPEAT = re.compile(r"\b(\w+)(?:\s+\1\b)+", re.IGNORECASE)
_AN_BEFORE_CONSONANT = re.compile(r"\b([Aa])n (?=[b-df-hj-np-tv-z])")


def clean_caption(text: str) -> str:
    """Remove BLIP's known artefacts: 'arafed'/'araffe' and words repeated in a row."""
    text = _ARAFED.sub("", text)
    text = _REPEAT.sub(r"\1", text)
    text = re.sub(r"\s+", " ", text).strip()
    # Removing "arafed" from "an arafed man" leaves "an man".
    return _AN_BEFORE_CONSONANT.sub(r"\1 ", text)


def clean_given_caption(text: str) -> str:
    """A caption someone typed or sent: control and format characters (NUL, CR, LF, tabs,
    bidirectional overrides, zero-width marks) and line separators become one space, runs
    of white space collapse, and the ends are stripped, so the prompt stays one line."""
    out = "".join(" " if is_invisible(c) else c for c in text)
    return re.sub(r"\s+", " ", out).strip()


def is_invisible(c: str) -> bool:
    """Control, format and line-separator characters; zero-width (non-)joiners stay (some
    scripts and emoji need them)."""
    return unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") and c not in "\u200c\u200d"
