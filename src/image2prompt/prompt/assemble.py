"""Prompt assembly and truncation: pure functions with the token counter injected.

``count_tokens(text)`` returns the number of text tokens the CLIP tokenizer makes
of ``text``, without the start and end tokens. A window of ``max_tokens`` (77 for
every Stable Diffusion text encoder) therefore holds ``max_tokens - 2`` of them.
"""

from __future__ import annotations

from typing import Callable, Sequence

CountTokens = Callable[[str], int]

from ..syntax import SEPARATOR
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

    Unlike the reference, the separator is counted: the reference measured
    ``kept + part`` with no ", " between them, which glues two words together.
    The first part (the caption) is always kept.
    """
    parts = text.split(SEPARATOR)
    kept = parts[0]
    for part in parts[1:]:
        candidate = kept + SEPARATOR + part
        if not fits(candidate, count_tokens, max_tokens):
            break
        kept = candidate
    return kept


def classic_prompt(caption: str, medium: str, artist: str, trending: str, movement: str,
                   flavors: Sequence[str]) -> str:
    """The reference's classic layout; ", medium" is dropped when the caption starts with it."""
    tail = f"{artist}, {trending}, {movement}, {SEPARATOR.join(flavors)}"
    if caption.startswith(medium):
        return f"{caption} {tail}"
    return f"{caption}, {medium} {tail}"


def fast_prompt(caption: str, phrases: Sequence[str]) -> str:
    return caption + SEPARATOR + SEPARATOR.join(phrases) if phrases else caption


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

