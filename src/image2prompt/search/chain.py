"""The phrase chain of best, negative and style modes (torch-free).

At each step the chain tries ``current + ", " + phrase`` for every remaining
phrase and keeps the best. It keeps going while similarity improves, always for
at least ``min_count`` steps and at most ``max_count``, and stops once the
prompt fills the token window. This is the reference's algorithm, with three
fixes: candidates are visited in a fixed order (the reference iterates a
``set``), ties go to the earlier candidate, and the reverse (negative) chain
compares like with like (the reference compared a negated similarity against a
positive one).

The chain is a small state machine (:class:`ChainState`) so that a driver can
advance the chains of many images in lockstep and score all their extensions
in shared encoder batches. :func:`greedy_chain` drives one chain to the end.
With ``beam > 1`` it keeps the ``beam`` best prompts at each step; beam 1 is
exactly the greedy chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

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


@dataclass
class _Beam:
    prompt: str
    sim: float  # signed: higher is better
    phrases: list[str]
    remaining: list[str]


class ChainState:
    """One chain, advanced step by step.

    ``requests()`` lists the (prefix, phrases) pairs to score for the next step;
    ``advance(scores)`` takes their similarities in the same order. ``done`` is
    True when the chain has finished; ``result()`` gives the best prompt seen.
    """

    def __init__(self, phrases: Sequence[str], at_limit: Callable[[str], bool], *, start: str,
                 start_similarity: float, start_phrases: Sequence[str] = (), min_count: int = 8,
                 max_count: int = 32, reverse: bool = False, beam: int = 1,
                 shortlist: int | None = None, refresh_every: int = 4) -> None:
        if beam < 1:
            raise ValueError(f"beam must be at least 1, got {beam}")
        # Turbo: between full passes (every refresh_every steps) score only the shortlist
        # of phrases that scored best the last time they were scored exactly.
        self.shortlist, self.refresh_every = shortlist, max(1, refresh_every)
        self._last: dict[str, float] = {}
        self._asked: list[list[str]] = []
        self._greedy_alive = True  # whether beams[0] is still the greedy chain
        self.sign = -1.0 if reverse else 1.0
        self.at_limit = at_limit
        self.min_count, self.max_count, self.beam = min_count, max_count, beam
        remaining = [p for p in dict.fromkeys(phrases) if p not in set(start_phrases)]
        sim = float(start_similarity) * self.sign
        self.beams = [_Beam(start, sim, list(start_phrases), remaining)]
        self.best = _Beam(start, sim, list(start_phrases), [])
        self.idx = 0
        self.steps = 0
        self.done = max_count <= 0 or not remaining

    def requests(self) -> list[tuple[str, list[str]]]:
        if self.done:
            return []
        full = self.shortlist is None or self.idx % self.refresh_every == 0 or not self._last
        if full:
            self._asked = [b.remaining for b in self.beams]
        else:
            floor = float("-inf")
            self._asked = []
            for b in self.beams:
                order = sorted(range(len(b.remaining)), key=lambda i: (-self._last.get(b.remaining[i], floor), i))
                self._asked.append([b.remaining[i] for i in sorted(order[: self.shortlist])])
        return [(b.prompt, asked) for b, asked in zip(self.beams, self._asked)]

    def advance(self, scores: Sequence[np.ndarray]) -> None:
        idx, self.idx = self.idx, self.idx + 1
        self.steps += 1
        options: list[tuple[float, int, int]] = []  # (-signed sim, beam, phrase index)
        for b, s in enumerate(scores):
            signed = np.asarray(s, dtype=np.float64) * self.sign
            self._last.update(zip(self._asked[b], signed.tolist()))
            if self.beam == 1:
                j = int(np.argmax(signed))  # first of equal maxima: table order wins ties
                options.append((-float(signed[j]), b, j))
            else:
                top = np.lexsort((np.arange(len(signed)), -signed))[: self.beam]
                options.extend((-float(signed[j]), b, int(j)) for j in top)
        options.sort()
        if self.beam > 1 and self._greedy_alive:
            # Beam 0 follows the greedy chain, so a wider beam never ends below beam 1.
            greedy = min(o for o in options if o[1] == 0)
            chosen = [greedy] + [o for o in options if o != greedy][: self.beam - 1]
        else:
            chosen = options[: self.beam]
        new_beams: list[_Beam] = []
        self._greedy_alive = False
        for rank, (neg, b, j) in enumerate(chosen):
            parent = self.beams[b]
            sim = -neg
            phrase = self._asked[b][j]
            prompt = parent.prompt + SEPARATOR + phrase
            if sim > self.best.sim:
                self.best = _Beam(prompt, sim, parent.phrases + [phrase], [])
            if sim > parent.sim or idx < self.min_count:
                rest = [p for p in parent.remaining if p != phrase]
                child = _Beam(prompt, sim, parent.phrases + [phrase], rest)
                if not self.at_limit(prompt) and rest:
                    if rank == 0 and b == 0 and not new_beams:
                        self._greedy_alive = True
                    new_beams.append(child)
        self.beams = new_beams
        if not self.beams or self.idx >= self.max_count:
            self.done = True

    def result(self) -> ChainResult:
        return ChainResult(self.best.prompt, self.best.sim * self.sign, list(self.best.phrases), self.steps)


def greedy_chain(phrases: Sequence[str], score_extensions: ScoreExtensions, at_limit: Callable[[str], bool],
                 **options: Any) -> ChainResult:
    """Run one chain over ``phrases`` (deduplicated, order kept) to the end.

    ``options`` are :func:`start_chain`'s: with no ``start``, the chain begins
    with the single best phrase, scored by ``score_texts``.
    """
    state = start_chain(phrases, at_limit, **options)
    if state is None:
        return ChainResult("", 0.0)
    while not state.done:
        state.advance([score_extensions(prefix, rest) for prefix, rest in state.requests()])
    return state.result()


def start_chain(
    phrases: Sequence[str],
    at_limit: Callable[[str], bool],
    *,
    start: str | None = None,
    start_similarity: float | None = None,
    score_texts: ScoreTexts | None = None,
    min_count: int = 8,
    max_count: int = 32,
    reverse: bool = False,
    beam: int = 1,
    shortlist: int | None = None,
    refresh_every: int = 4,
) -> ChainState | None:
    """A ChainState; without ``start`` it begins at the best single phrase (None if there are none)."""
    phrases = list(dict.fromkeys(phrases))
    first: list[str] = []
    if start is None:
        if score_texts is None:
            raise ValueError("score_texts is needed when the chain has no start")
        if not phrases:
            return None
        sims = np.asarray(score_texts(phrases), dtype=np.float64) * (-1.0 if reverse else 1.0)
        j = int(np.argmax(sims))
        start, start_similarity, first = phrases[j], float(sims[j]) * (-1.0 if reverse else 1.0), [phrases[j]]
    elif start_similarity is None:
        raise ValueError("start_similarity is needed with a start prompt")
    return ChainState(phrases, at_limit, start=start, start_similarity=start_similarity, start_phrases=first,
                      min_count=min_count, max_count=max_count, reverse=reverse, beam=beam,
                      shortlist=shortlist, refresh_every=refresh_every)
