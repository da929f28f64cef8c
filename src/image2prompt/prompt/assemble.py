"""Prompt assembly and truncation: pure functions with the token counter injected.

``count_tokens(text)`` returns the number of text tokens the CLIP tokenizer makes
of ``text``, without the start and end tokens. A window of ``max_tokens`` (77 for
every Stable Diffusion text encoder) therefore holds ``max_tokens - 2`` of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ..syntax import SEPARATOR

CountTokens = Callable[[str], int]

DEFAULT_MAX_TOKENS = 77


def text_budget(max_tokens: int = DEFAULT_MAX_TOKENS) -> int:
    """Text tokens that fit in a window of ``max_tokens`` (start and end tokens excluded)."""
    if max_tokens < 3:
        raise ValueError(f"max_tokens must be at least 3, got {max_tokens}")
    return max_tokens - 2


def fits(text: str, count_tokens: CountTokens, max_tokens: int = DEFAULT_MAX_TOKENS) -> bool:
    return count_tokens(text) <= text_budget(max_tokens)


def at_limit(text: str, count_tokens: CountTokens, max_tokens: int = DEFAULT_MAX_TOKENS) -> bool:
    """True once ``text`` fills the window: the chain stops growing there."""
    return count_tokens(text) >= text_budget(max_tokens)


def truncate_to_fit(text: str, count_tokens: CountTokens, max_tokens: int = DEFAULT_MAX_TOKENS) -> str:
    """Keep the leading ", "-separated parts that fit in the window.

    Unlike the reference, the separator is counted (it measured ``kept + part``, gluing two
    words together). The first part (the caption) is always kept, cut at a word boundary if it
    alone is over the budget, so the result always fits. A prompt's token count only grows as
    parts are added, so the first part that no longer fits is found by bisection: about
    log2(parts) tokenizer calls, the same result as adding parts one by one.
    """
    parts = text.split(SEPARATOR)
    whole_checked = bool(parts[0])  # with no first part the prompt drops its leading separator
    if whole_checked and fits(text, count_tokens, max_tokens):  # a short prompt (classic's, usually)
        return text
    kept = cut_to_fit(parts[0], count_tokens, max_tokens)
    if kept != parts[0]:
        return kept
    prefixes = []  # prefixes[i]: the first part and the next i + 1, joined as the prompt joins them
    for part in parts[1:]:
        kept = kept + SEPARATOR + part if kept else part
        prefixes.append(kept)
    # prefixes[lo] fits (-1: the first part alone); prefixes[hi] does not (the last one is the
    # whole text, already found too long when it was checked above)
    lo, hi = -1, len(prefixes) - 1 if whole_checked else len(prefixes)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(prefixes[mid], count_tokens, max_tokens):
            lo = mid
        else:
            hi = mid
    return prefixes[lo] if lo >= 0 else parts[0]


def cut_to_fit(text: str, count_tokens: CountTokens, max_tokens: int = DEFAULT_MAX_TOKENS) -> str:
    """``text`` if it fits, else its longest start that ends at a word boundary and fits
    (trailing separators dropped; empty if not even the first word fits)."""
    if fits(text, count_tokens, max_tokens):
        return text
    words = text.split(" ")
    lo, hi = 0, len(words) - 1  # words[:lo] fits, words[:hi + 1] does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(" ".join(words[:mid]), count_tokens, max_tokens):
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo]).rstrip(" ,;:")


_BOUNDARY = re.compile(r"[.;:!?,](?=\s)")


def cut_caption_to_fit(text: str, count_tokens: CountTokens, max_tokens: int = DEFAULT_MAX_TOKENS) -> str:
    """A caption over the budget, cut where a sentence or clause ends (". ", "; ", ", "...): a VLM's
    long description keeps whole clauses, not a fragment. Where the last boundary that fits would
    keep fewer than half the words a cut at a word boundary keeps, the word cut wins."""
    if fits(text, count_tokens, max_tokens):
        return text
    by_word = cut_to_fit(text, count_tokens, max_tokens)
    ends = [m.start() for m in _BOUNDARY.finditer(text) if m.start() <= len(by_word)]
    for end in reversed(ends):
        kept = text[:end].rstrip(" ,;:")
        if fits(kept, count_tokens, max_tokens):
            return kept if 2 * len(kept.split()) >= len(by_word.split()) else by_word
    return by_word


def classic_prompt(caption: str, medium: str | None, artist: str | None, trending: str | None,
                   movement: str | None, flavors: Sequence[str], *, joined: bool = False) -> str:
    """The reference's classic layout; ", medium" is dropped when the caption starts with it. With ``joined`` (or a
    part given as None: the relevance floor kept it out) the parts present are joined with the separator, none left
    empty."""
    if joined or None in (medium, artist, trending, movement):
        if medium and caption.startswith(medium):
            medium = None
        head = " ".join(x for x in (medium, artist) if x)
        return SEPARATOR.join(x for x in (caption, head, trending, movement, *flavors) if x)
    tail = f"{artist}, {trending}, {movement}, {SEPARATOR.join(flavors)}"
    if not caption:
        return f"{medium} {tail}"
    if medium and caption.startswith(medium):
        return f"{caption} {tail}"
    return f"{caption}, {medium} {tail}"


def fast_prompt(caption: str, phrases: Sequence[str]) -> str:
    return SEPARATOR.join(([caption] if caption else []) + list(phrases))


def split_into_chunks(prompt: str, count_tokens: CountTokens, chunk_tokens: int = 75) -> list[str]:
    """Split a long prompt at ", " boundaries into chunks of at most ``chunk_tokens`` text tokens.

    Front ends that chunk prompts (A1111's BREAK, ComfyUI's conditioning concat)
    encode each chunk in its own window. A single part longer than a chunk stays whole.
    """
    chunks: list[str] = []
    current = ""
    for part in prompt.split(SEPARATOR):
        candidate = part if not current else current + SEPARATOR + part
        if current and count_tokens(candidate) > chunk_tokens:
            chunks.append(current)
            current = part
        else:
            current = candidate
    if current:
        chunks.append(current)
    return chunks

