from __future__ import annotations

import numpy as np
import pytest

from image2prompt.search import greedy_chain


def additive_scorer(weights: dict[str, float], base: float = 0.0):
    """Similarity of a prompt = base + sum of its phrases' weights (a deterministic toy)."""

    def score(prompt: str) -> float:
        return base + sum(weights.get(p, 0.0) for p in prompt.split(", "))

    return score


def make(weights, **kw):
    score = additive_scorer(weights)
    ext = lambda prefix, phrases: np.array([score(prefix + ", " + p) for p in phrases])  # noqa: E731
    texts = lambda ts: np.array([score(t) for t in ts])  # noqa: E731
    return ext, texts


def test_adds_positive_phrases_then_stops_after_min_count():
    weights = {"a": 0.3, "b": 0.2, "c": 0.1, "d": -0.1, "e": -0.2}
    ext, _ = make(weights)
    res = greedy_chain(list(weights), ext, lambda t: False, start="cap", start_similarity=0.0,
                       min_count=2, max_count=10)
    assert res.prompt == "cap, a, b, c"
    assert res.phrases == ["a", "b", "c"]
    assert res.similarity == pytest.approx(0.6)


def test_min_count_forces_steps_but_best_prompt_is_returned():
    weights = {"a": 0.3, "b": -0.1, "c": -0.2, "d": -0.3}
    ext, _ = make(weights)
    res = greedy_chain(list(weights), ext, lambda t: False, start="cap", start_similarity=0.0,
                       min_count=3, max_count=10)
    # Forced through b and c (min_count), then d makes it worse and the chain stops;
    # the best prompt seen, "cap, a", is returned.
    assert res.prompt == "cap, a"
    assert res.steps == 4


def test_ties_go_to_the_earlier_candidate_and_duplicates_are_dropped():
    weights = {"x": 0.5, "y": 0.5, "z": 0.1}
    ext, _ = make(weights)
    res = greedy_chain(["y", "x", "y", "z"], ext, lambda t: False, start="cap", start_similarity=0.0,
                       min_count=0, max_count=1)
    assert res.prompt == "cap, y"


def test_stops_at_token_limit():
    weights = {p: 1.0 for p in "abcdefgh"}
    ext, _ = make(weights)
    res = greedy_chain(list(weights), ext, lambda t: t.count(",") >= 3, start="cap", start_similarity=0.0,
                       min_count=0, max_count=32)
    assert res.prompt == "cap, a, b, c"


def test_reverse_chain_minimises_consistently():
    # The reference compared a negated similarity against a positive start score;
    # here the chain keeps adding while the (true) similarity keeps falling.
    weights = {"good": 0.4, "bad": -0.3, "worse": -0.2, "meh": 0.1}
    ext, texts = make(weights)
    res = greedy_chain(list(weights), ext, lambda t: False, score_texts=texts, min_count=0,
                       max_count=10, reverse=True)
    assert res.prompt == "bad, worse"
    assert res.similarity == pytest.approx(-0.5)
    assert res.phrases == ["bad", "worse"]


def test_max_count_bounds_steps_and_empty_pool_is_safe():
    weights = {p: 1.0 for p in "abcdef"}
    ext, texts = make(weights)
    res = greedy_chain(list(weights), ext, lambda t: False, start="cap", start_similarity=0.0, max_count=3)
    assert res.phrases == ["a", "b", "c"]
    assert greedy_chain([], ext, lambda t: False, score_texts=texts, reverse=True).prompt == ""
    with pytest.raises(ValueError):
        greedy_chain(["a"], ext, lambda t: False)
