"""Caption clean-up (pure string work, no torch)."""

from __future__ import annotations

import re

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
