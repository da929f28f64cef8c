"""The phrase chain of best, negative and style modes (torch-free).

At each step the chain tries ``current + ", " + phrase`` for every remaining phrase and keeps the best. It keeps going
while similarity improves, always for at least ``min_count`` steps and at most ``max_count``, and stops once the
prompt fills the token window. This is the reference's algorithm, with three fixes: candidates are visited in a fixed
order (the reference iterates a ``set``), ties go to the earlier candidate, and the reverse (negative) chain compares
like with like (the reference compared a negated similarity against a positive one).

The chain is a small state machine (:class:`ChainState`) so that a driver can advance the chains of many images in
lockstep and score all their extensions in shared encoder batches. With ``beam > 1`` it keeps the ``beam`` best
prompts at each step; beam 1 is exactly the greedy chain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..settings import SearchSettings
from ..syntax import SEPARATOR

#: The turbo defaults, defined once, in SearchSettings.
_DEFAULTS = SearchSettings()

#: score_texts(texts) -> similarity of each text on its own.
ScoreTexts = Callable[[Sequence[str]], np.ndarray]


@dataclass
class ChainResult:
    prompt: str
    similarity: float  # the true similarity (not negated for reverse chains)
    phrases: list[str] = field(default_factory=list)  # phrases added to the start, in order
    steps: int = 0
    similarities: list[float] = field(default_factory=list)  # the prompt's similarity after each phrase


@dataclass
class _Beam:
    prompt: str
    sim: float  # signed: higher is better
    phrases: list[str]
    remaining: list[str]
    sims: list[float] = field(default_factory=list)  # signed similarity after each phrase (for traces)


class ChainState:
    """One chain, advanced step by step.

    ``requests()`` lists the (prefix, phrases) pairs to score next; ``advance(scores)`` takes their similarities in
    the same order. ``done`` is True when the chain has finished; ``result()`` gives the best prompt seen.

    With ``shortlist`` (turbo mode) a step is a *lazy greedy* search (Minoux's accelerated greedy). A phrase's gain is
    its score minus the score of the prompt it extended; each phrase keeps the gains it had whenever it was scored
    exactly. A step scores phrases in rounds of ``shortlist``, highest mean past gain first, and ends as soon as the
    best exact score found reaches the highest latest gain still unscored. Where adding phrases only dilutes the
    others' effect, a phrase's latest gain bounds its gain now, so the step ends on the phrase best mode would pick.
    Where gains do not only shrink, a gain is a lasting part plus noise from step to step, and the mean of past gains
    ranks phrases by the lasting part better than the latest gain does (bench/landscape.py). At most ``max_rounds``
    rounds are run per step, except that a step which would end the chain scores all its phrases first, as best mode's
    does; every ``refresh_every`` steps (0: only the first) the whole pool is rescored, which catches phrases whose
    gain grew. One ``requests()``/``advance()`` pair is one round, so a step may take several.

    With ``keep`` (turbo) the first step still scores every phrase, as best mode's does, and then only the ``keep``
    phrases with the highest gains there stay in the pool: the pool is narrowed by each phrase's effect on this prompt
    rather than by its score on its own, which is how it was chosen.
    """

    def __init__(self, phrases: Sequence[str], at_limit: Callable[[str], bool], *, start: str, start_similarity: float,
                 start_phrases: Sequence[str] = (), min_count: int = 8, max_count: int = 32, reverse: bool = False,
                 beam: int = 1, shortlist: int | None = None, refresh_every: int = _DEFAULTS.refresh_every,
                 max_rounds: int = _DEFAULTS.max_rounds, keep: int | None = None,
                 fits: Callable[[str], bool] | None = None) -> None:
        for name, value in (("beam", beam), ("shortlist", shortlist), ("keep", keep)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.shortlist, self.refresh_every, self.max_rounds = shortlist, max(0, refresh_every), max(1, max_rounds)
        self.keep = keep
        self._gain_sum: dict[str, float] = {}  # turbo: the sum of each phrase's exact gains so far
        self._gain_n: dict[str, int] = {}  # turbo: how many times each phrase was scored exactly
        self._gain_last: dict[str, float] = {}  # turbo: each phrase's gain when last scored exactly
        self._asked: list[list[str]] = []  # this round's phrases, per beam
        self._pending: list[list[str]] = []  # turbo: phrases not yet scored this step, highest mean gain first
        self._found: list[list[tuple[str, float]]] = []  # (phrase, signed score) scored this step, per beam
        self._round = 0
        self._greedy_alive = True  # whether beams[0] is still the greedy chain
        self.sign = -1.0 if reverse else 1.0
        self.at_limit = at_limit
        self.fits = fits  # a prompt that does not fit the token budget is never the result
        self.min_count, self.max_count, self.beam = min_count, max_count, beam
        remaining = [p for p in dict.fromkeys(phrases) if p not in set(start_phrases)]
        sim = float(start_similarity) * self.sign
        first = [sim] * len(start_phrases)
        self.beams = [_Beam(start, sim, list(start_phrases), remaining, first)]
        self.best = _Beam(start, sim, list(start_phrases), [], first)
        self.steps = 0  # finished steps
        self.rounds = 0  # requests()/advance() pairs so far
        self.done = max_count <= 0 or not remaining
        if not self.done:
            self._next_round()

    def _full_step(self) -> bool:
        if self.shortlist is None or not self._gain_n:
            return True
        return self.refresh_every > 0 and self.steps % self.refresh_every == 0

    def requests(self) -> list[tuple[str, list[str]]]:
        """The (prefix, phrases) pairs of this round, one per beam (a beam may have none)."""
        if self.done:
            return []
        return [(b.prompt, asked) for b, asked in zip(self.beams, self._asked)]

    def _next_round(self) -> None:
        """Choose what the next round scores: the pool, or a lazy round of the best stale gains."""
        if self._round == 0:
            self._found = [[] for _ in self.beams]
            if self._full_step():
                self._pending = [[] for _ in self.beams]
                self._asked = [list(b.remaining) for b in self.beams]
            else:
                self._pending = [sorted(b.remaining, key=lambda p: -self._mean_gain(p)) for b in self.beams]
                self._asked = [[] for _ in self.beams]
        if any(self._pending):
            # After max_rounds, a beam that is still undecided gets the rest of its phrases at once.
            k = (self.shortlist or 0) if self._round < self.max_rounds else None
            self._asked = [[] if self._settled(b) else pend[:k] for b, pend in enumerate(self._pending)]
            self._pending = [pend[len(asked):] for pend, asked in zip(self._pending, self._asked)]

    def _mean_gain(self, phrase: str) -> float:
        """The mean of the phrase's exact gains so far; a phrase never scored is tried first."""
        n = self._gain_n.get(phrase, 0)
        return self._gain_sum[phrase] / n if n else float("inf")

    def _settled(self, b: int) -> bool:
        """Whether beam ``b``'s step is decided.

        It is when every phrase was scored, or when no unscored phrase's stale gain could beat what was found. After
        ``max_rounds`` rounds the best found is accepted, except where it would end the chain (no improvement past
        ``min_count``): best mode stops only when no phrase at all improves, so the rest are scored before stopping.
        """
        pend, found = self._pending[b], self._found[b]
        if not pend:
            return True
        if len(found) >= min(self.beam, len(found) + len(pend)):
            kth = sorted((s for _, s in found), reverse=True)[min(self.beam, len(found)) - 1]
            bound = max(self._gain_last.get(p, float("inf")) for p in pend)
            if kth >= self.beams[b].sim + bound:
                return True
        if self._round < self.max_rounds:
            return False
        best = max((s for _, s in found), default=float("-inf"))
        return not (self.steps >= self.min_count and best <= self.beams[b].sim)  # not where it would end the chain

    def advance(self, scores: Sequence[np.ndarray]) -> None:
        self.rounds += 1
        self._round += 1
        for b, s in enumerate(scores):
            signed = (np.asarray(s, dtype=np.float64) * self.sign).tolist()
            base = self.beams[b].sim
            for phrase, v in zip(self._asked[b], signed):
                self._gain_sum[phrase] = self._gain_sum.get(phrase, 0.0) + (v - base)
                self._gain_n[phrase] = self._gain_n.get(phrase, 0) + 1
                self._gain_last[phrase] = v - base
                self._found[b].append((phrase, v))
        if all(self._settled(b) for b in range(len(self.beams))):
            self._round = 0
            self._finish_step()
        if not self.done:
            self._next_round()

    def _finish_step(self) -> None:
        idx = self.steps
        self.steps += 1
        options: list[tuple[float, int, int, str]] = []  # (-signed sim, beam, table position, phrase)
        for b, found in enumerate(self._found):
            # Table order among what was scored, so ties go to the earlier phrase as in a full pass.
            pos = {p: i for i, p in enumerate(self.beams[b].remaining)}
            ranked = sorted(((-v, pos[p], p) for p, v in found))
            options.extend((neg, b, i, p) for neg, i, p in ranked[: self.beam])
        options.sort()
        if self.beam > 1 and self._greedy_alive:
            # Beam 0 follows the greedy chain, so a wider beam never ends below beam 1.
            greedy = min(o for o in options if o[1] == 0)
            chosen = [greedy] + [o for o in options if o != greedy][: self.beam - 1]
        else:
            chosen = options[: self.beam]
        new_beams: list[_Beam] = []
        self._greedy_alive = False
        for rank, (neg, b, _, phrase) in enumerate(chosen):
            parent = self.beams[b]
            sim = -neg
            prompt = parent.prompt + SEPARATOR + phrase
            if sim > self.best.sim and (self.fits is None or self.fits(prompt)):
                self.best = _Beam(prompt, sim, parent.phrases + [phrase], [], parent.sims + [sim])
            if sim > parent.sim or idx < self.min_count:
                rest = [p for p in parent.remaining if p != phrase]
                if idx == 0 and self.keep is not None and len(rest) > self.keep:
                    kept = set(sorted(rest, key=lambda p: -self._gain_last[p])[: self.keep])  # stable: table order
                    rest = [p for p in rest if p in kept]
                child = _Beam(prompt, sim, parent.phrases + [phrase], rest, parent.sims + [sim])
                if not self.at_limit(prompt) and rest:
                    if rank == 0 and b == 0 and not new_beams:
                        self._greedy_alive = True
                    new_beams.append(child)
        self.beams = new_beams
        if not self.beams or self.steps >= self.max_count:
            self.done = True

    def result(self) -> ChainResult:
        return ChainResult(self.best.prompt, self.best.sim * self.sign, list(self.best.phrases), self.steps,
                           [v * self.sign for v in self.best.sims])


def start_chain(phrases: Sequence[str], at_limit: Callable[[str], bool], *, start: str | None = None,
                start_similarity: float | None = None, score_texts: ScoreTexts | None = None, reverse: bool = False,
                fits: Callable[[str], bool] | None = None, **options: Any) -> ChainState | None:
    """A ChainState (``options``: its other keyword arguments); without ``start`` it begins at the
    best single phrase that ``fits`` (None if there is none)."""
    phrases = list(dict.fromkeys(phrases))
    first: list[str] = []
    if start is None:
        if score_texts is None:
            raise ValueError("score_texts is needed when the chain has no start")
        if not phrases:
            return None
        sign = -1.0 if reverse else 1.0
        sims = np.asarray(score_texts(phrases), dtype=np.float64) * sign
        order = np.argsort(-sims, kind="stable")  # best first; ties keep table order
        j = next((int(k) for k in order if fits is None or fits(phrases[int(k)])), None)
        if j is None:
            return None
        start, start_similarity, first = phrases[j], float(sims[j]) * sign, [phrases[j]]
    elif start_similarity is None:
        raise ValueError("start_similarity is needed with a start prompt")
    return ChainState(phrases, at_limit, start=start, start_similarity=start_similarity, start_phrases=first,
                      reverse=reverse, fits=fits, **options)
