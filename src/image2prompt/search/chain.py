"""The greedy phrase chain of best and negative modes (torch-free).

At each step the chain tries ``current + ", " + phrase`` for every remaining
phrase and keeps the best. It keeps going while similarity improves, always for
at least ``min_count`` steps and at most ``max_count``, and stops once the
prompt fills the token window. This is the reference's algorithm, with three
fixes: candidates are visited in a fixed order (the reference iterates a
``set``), ties go to the earlier candidate, and the reverse (negative) chain
compares like with like (the reference compared a negated similarity against a
positive one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..prompt.assemble import SEPARATOR

#: score_extensions(prefix, phrases) -> similarity of f"{prefix}, {phrase}" for each phrase.
ScoreExtensions = Callable[[str, Sequence[str]], np.ndarray]
#: score_texts(texts) -> similarity of each text on its own.
ScoreTexts = Callable[[Sequence[str]], np.ndarray]


@dataclass
class ChainResult:
    prompt: str
    similarity: float  # the true similarity (not negated for reverse chains)
    phrases: list[str] = field(default_factory=list)  # phrases added to the start, in order
    steps: int = 0


def greedy_chain(
    phrases: Sequence[str],
    score_extensions: ScoreExtensions,
    at_limit: Callable[[str], bool],
    *,
    start: str | None = None,
    start_similarity: float | None = None,
    score_texts: ScoreTexts | None = None,
    min_count: int = 8,
    max_count: int = 32,
    reverse: bool = False,
) -> ChainResult:
    """Run the chain over ``phrases`` (deduplicated, order kept).

    With no ``start``, the chain begins with the single best phrase, scored by
    ``score_texts``.
    """
    sign = -1.0 if reverse else 1.0
    remaining = list(dict.fromkeys(phrases))
    if start is None:
        if score_texts is None:
            raise ValueError("score_texts is needed when the chain has no start")
        if not remaining:
            return ChainResult("", 0.0)
        sims = np.asarray(score_texts(remaining), dtype=np.float64) * sign
        first = int(np.argmax(sims))
        best_prompt, best_sim = remaining.pop(first), float(sims[first])
        best_phrases = [best_prompt]
    else:
        if start_similarity is None:
            raise ValueError("start_similarity is needed with a start prompt")
        best_prompt, best_sim = start, float(start_similarity) * sign
        best_phrases = []
    curr_prompt, curr_sim, curr_phrases = best_prompt, best_sim, list(best_phrases)

    steps = 0
    for idx in range(max_count):
        if not remaining:
            break
        sims = np.asarray(score_extensions(curr_prompt, remaining), dtype=np.float64) * sign
        j = int(np.argmax(sims))
        sim = float(sims[j])
        phrase = remaining[j]
        prompt = curr_prompt + SEPARATOR + phrase
        steps += 1
        if sim > best_sim:
            best_prompt, best_sim, best_phrases = prompt, sim, curr_phrases + [phrase]
        if sim > curr_sim or idx < min_count:
            curr_prompt, curr_sim, curr_phrases = prompt, sim, curr_phrases + [phrase]
        else:
            break
        if at_limit(curr_prompt):
            break
        remaining.pop(j)
    return ChainResult(best_prompt, best_sim * sign, best_phrases, steps)
