from __future__ import annotations

import numpy as np
import pytest

from image2prompt.search.chain import start_chain
from tests.support.chains import greedy_chain


def additive_scorer(weights: dict[str, float], base: float = 0.0):
    """Similarity of a prompt = base + sum of its phrases' weights (a deterministic toy)."""

    def score(prompt: str) -> float:
        return base + sum(weights.get(p, 0.0) for p in prompt.split(", "))

    return score


def make(weights, **kw):
    score = additive_scorer(weights)
    ext = lambda prefix, phrases: np.array([score(prefix + ", " + p) for p in phrases])
    texts = lambda ts: np.array([score(t) for t in ts])
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


def pairwise_scorer(weights: dict[str, float], pairs: dict[frozenset, float]):
    def score(prompt: str) -> float:
        parts = prompt.split(", ")
        s = sum(weights.get(p, 0.0) for p in parts)
        return s + sum(v for k, v in pairs.items() if k <= set(parts))

    return score


def test_beam_one_is_the_greedy_chain_and_wider_beams_can_do_better():
    # "a" looks best alone, but "b" + "c" together are worth more: greedy takes a and misses it.
    weights = {"a": 0.5, "b": 0.3, "c": 0.1, "d": -0.5}
    pairs = {frozenset({"b", "c"}): 0.6}
    score = pairwise_scorer(weights, pairs)
    ext = lambda prefix, phrases: np.array([score(prefix + ", " + p) for p in phrases])
    kw = dict(start="cap", start_similarity=0.0, min_count=0, max_count=2)
    greedy = greedy_chain(list(weights), ext, lambda t: False, **kw)
    beam1 = greedy_chain(list(weights), ext, lambda t: False, beam=1, **kw)
    beam2 = greedy_chain(list(weights), ext, lambda t: False, beam=2, **kw)
    assert beam1 == greedy
    assert greedy.prompt == "cap, a, b"  # 0.8
    assert beam2.prompt == "cap, b, c" and beam2.similarity == pytest.approx(1.0)
    with pytest.raises(ValueError):
        greedy_chain(["a"], ext, lambda t: False, beam=0, **kw)


def test_lockstep_states_give_the_same_results_as_one_at_a_time():
    from image2prompt.search import ChainState

    rng = np.random.RandomState(0)
    vocab = [f"p{i}" for i in range(30)]
    tables = [dict(zip(vocab, rng.randn(30))) for _ in range(3)]

    def ext_for(w):
        return lambda prefix, phrases: np.array([sum(w.get(x, 0) for x in (prefix + ", " + p).split(", "))
                                                 for p in phrases])

    alone = [greedy_chain(vocab, ext_for(w), lambda t: t.count(",") >= 6, start="c", start_similarity=0.0,
                          min_count=2, max_count=10, beam=2) for w in tables]
    states = [ChainState(vocab, lambda t: t.count(",") >= 6, start="c", start_similarity=0.0, min_count=2,
                         max_count=10, beam=2) for _ in tables]
    while not all(s.done for s in states):
        for s, w in zip(states, tables):
            if not s.done:
                s.advance([ext_for(w)(prefix, rest) for prefix, rest in s.requests()])
    assert [s.result() for s in states] == alone


def test_shortlist_scores_fewer_phrases_and_equals_full_when_scores_are_stable():
    """With additive scores, the last exact scores rank the remaining phrases exactly: turbo = greedy."""
    rng = np.random.RandomState(3)
    vocab = [f"p{i}" for i in range(200)]
    w = dict(zip(vocab, rng.rand(200) * 0.01 + np.linspace(0.2, -0.2, 200)))
    asked = []

    def ext(prefix, phrases):
        asked.append(len(phrases))
        return np.array([sum(w.get(x, 0) for x in (prefix + ", " + p).split(", ")) for p in phrases])

    kw = dict(start="c", start_similarity=0.0, min_count=8, max_count=20)
    full = greedy_chain(vocab, ext, lambda t: False, **kw)
    full_cost = sum(asked)
    asked.clear()
    turbo = greedy_chain(vocab, ext, lambda t: False, shortlist=16, refresh_every=5, **kw)
    assert turbo.prompt == full.prompt
    assert sum(asked) * 3 < full_cost


def _coverage(seed: int, n: int = 400, topics: int = 12):
    """A weighted coverage function: submodular, with gains that shrink at different rates."""
    rng = np.random.RandomState(seed)
    vocab = [f"q{i}" for i in range(n)]
    cover = dict(zip(vocab, rng.rand(n, topics) ** 4))  # each phrase covers a few topics well
    value = rng.rand(topics)

    def f(prompt: str) -> float:
        left = np.ones(topics)
        for p in prompt.split(", ")[1:]:
            left *= 1.0 - cover[p]
        return float(value @ (1.0 - left))

    return vocab, f


@pytest.mark.parametrize("seed", range(5))
def test_lazy_greedy_equals_greedy_on_submodular_scores(seed):
    """With shrinking gains a stale gain bounds the current one, so enough lazy rounds pick
    exactly the phrase a full pass would; the settle rule stops each step early."""
    vocab, f = _coverage(seed)
    scored = []

    def ext(prefix, phrases):
        scored.append(len(phrases))
        return np.array([f(prefix + ", " + p) for p in phrases])

    kw = dict(start="c", start_similarity=0.0, min_count=4, max_count=15)
    full = greedy_chain(vocab, ext, lambda t: False, **kw)
    full_cost, scored[:] = sum(scored), []
    lazy = greedy_chain(vocab, ext, lambda t: False, shortlist=8, max_rounds=100, refresh_every=0, **kw)
    assert lazy.prompt == full.prompt and lazy.similarity == pytest.approx(full.similarity)
    assert sum(scored) * 1.1 < full_cost  # 1.13x to 1.18x fewer: the settle rule ends steps early


def _drive(state, ext) -> list[list[list[str]]]:
    """Run a chain to the end; the phrases asked in each round, per beam."""
    asked = []
    while not state.done:
        reqs = state.requests()
        asked.append([rest for _, rest in reqs])
        state.advance([ext(p, rest) for p, rest in reqs])
    return asked


def test_lazy_rounds_rank_by_the_mean_of_past_gains():
    """A phrase whose gain dipped once is still tried before ones whose only gains were lower:
    the mean of past gains ranks the shortlist, not the latest gain alone."""
    vocab = ["a", "b", "c", "d", "e", "f"]
    sims = [
        {"a": 0.9, "b": 0.5, "c": 0.45, "d": 0.2, "e": 0.0, "f": 0.1},  # from "c0"
        {"b": 1.2, "c": 0.95, "d": 1.0, "e": 0.9, "f": 0.95},  # from "c0, a": c's gain dips to 0.05
        {"c": 1.6, "d": 1.3, "e": 1.2, "f": 1.25},  # from "c0, a, b"
    ]
    ext = lambda prefix, phrases: np.array([sims[prefix.count(", ")][p] for p in phrases])
    kw = dict(start="c0", start_similarity=0.0, min_count=0, max_count=3)
    full = greedy_chain(vocab, ext, lambda t: False, **kw)
    state = start_chain(vocab, lambda t: False, shortlist=2, max_rounds=1, refresh_every=0, **kw)
    asked = _drive(state, ext)
    assert full.prompt == "c0, a, b, c" and state.result().prompt == full.prompt
    # c's mean gain (0.25) ranks above d's (0.2) and f's (0.1); its latest (0.05) would not.
    assert asked[1:] == [[["b", "c"]], [["c", "d"]]]


def test_lazy_rounds_are_capped_and_refresh_rescores_the_pool():
    rng = np.random.RandomState(0)
    vocab = [f"r{i}" for i in range(64)]
    sizes = []

    def ext(prefix, phrases):  # no structure: stale gains say nothing about the next step
        sizes.append(len(phrases))
        return rng.rand(len(phrases))

    state = start_chain(vocab, lambda t: False, start="c", start_similarity=0.0, min_count=12, max_count=12,
                        shortlist=5, max_rounds=3, refresh_every=6)
    per_step: list[list[int]] = []
    while not state.done:
        step = state.steps
        reqs = state.requests()
        assert state.requests() == reqs  # a query: asking twice changes nothing
        if len(per_step) <= step:
            per_step.append([])
        per_step[step] += [len(rest) for _, rest in reqs]
        state.advance([ext(p, rest) for p, rest in reqs])
    assert per_step[0] == [64] and per_step[6] == [64 - 6]  # full passes: the first and every 6th step
    assert all(1 <= len(r) <= 3 and all(n <= 5 for n in r) for i, r in enumerate(per_step) if i not in (0, 6))
    assert state.rounds == sum(len(r) for r in per_step) and state.steps == 12


def test_lazy_ties_go_to_the_earlier_phrase_in_table_order():
    vocab = ["a", "b", "c", "d"]
    ext = lambda prefix, phrases: np.array([1.0 if p in ("b", "d") else 0.0 for p in phrases])
    state = start_chain(vocab, lambda t: False, start="c0", start_similarity=0.0, min_count=1, max_count=1,
                        shortlist=2)
    while not state.done:
        state.advance([ext(p, rest) for p, rest in state.requests()])
    assert state.result().phrases == ["b"]


def test_lazy_chain_stops_only_when_no_phrase_at_all_improves():
    """Stale gains point away from the one phrase that still helps; before stopping, the
    lazy step scores every phrase, so the chain goes on exactly as best mode's does."""
    vocab = ["a", "b", "c", "d", "e", "f", "g", "h"]
    step0 = {"a": 0.5, "b": 0.3, "c": 0.2, "d": 0.1, "e": 0.1, "f": 0.1, "g": 0.1, "h": -0.4}

    def ext(prefix, phrases):
        n = prefix.count(", ")
        if n == 0:
            return np.array([step0[p] for p in phrases])
        return np.array([0.9 if (n == 1 and p == "h") else 0.0 for p in phrases])

    kw = dict(start="c0", start_similarity=0.0, min_count=0, max_count=10)
    full = greedy_chain(vocab, ext, lambda t: False, **kw)
    state = start_chain(vocab, lambda t: False, shortlist=2, max_rounds=1, refresh_every=0, **kw)
    sizes = [[len(rest) for rest in round_] for round_ in _drive(state, ext)]
    assert full.prompt == "c0, a, h" and state.result().prompt == full.prompt
    assert sizes[:3] == [[8], [2], [5]]  # full first pass, one lazy round, then the rest before stopping


def test_keep_narrows_the_pool_to_the_highest_first_gains():
    """After the full first pass only the ``keep`` phrases with the highest gains there are
    ever scored again, and with additive scores the chain is still exactly greedy's."""
    rng = np.random.RandomState(5)
    vocab = [f"k{i}" for i in range(120)]
    w = dict(zip(vocab, rng.randn(120)))  # table order is not gain order
    asked: list[list[str]] = []

    def ext(prefix, phrases):
        asked.append(list(phrases))
        return np.array([sum(w.get(x, 0) for x in (prefix + ", " + p).split(", ")) for p in phrases])

    kw = dict(start="c", start_similarity=0.0, min_count=6, max_count=6)
    full = greedy_chain(vocab, ext, lambda t: False, **kw)
    asked.clear()
    kept = greedy_chain(vocab, ext, lambda t: False, shortlist=4, refresh_every=3, keep=10, **kw)
    assert kept.prompt == full.prompt
    assert asked[0] == vocab  # the first step scores the whole pool
    ranked = sorted(vocab, key=lambda p: -w[p])  # gain order; the first is the first step's pick
    later = {p for a in asked[1:] for p in a}
    assert later == set(ranked[1:11])  # the 10 kept; the refresh at step 3 rescored every one left
    with pytest.raises(ValueError, match="keep"):
        start_chain(vocab, lambda t: False, keep=0, **kw)


def test_result_carries_the_similarity_after_each_step():
    weights = {"a": 0.3, "b": 0.2, "c": 0.1, "d": -0.1}
    ext, _ = make(weights)
    res = greedy_chain(list(weights), ext, lambda t: False, start="cap", start_similarity=0.0,
                       min_count=0, max_count=10)
    assert res.phrases == ["a", "b", "c"]
    np.testing.assert_allclose(res.similarities, [0.3, 0.5, 0.6])


def test_reverse_chain_similarities_are_true_values():
    weights = {"a": 0.3, "b": -0.2, "c": -0.1}
    ext, texts = make(weights)
    res = greedy_chain(list(weights), ext, lambda t: False, score_texts=texts, min_count=0, reverse=True)
    assert res.phrases[0] == "b" and res.similarities[0] == pytest.approx(-0.2)
    assert res.similarities[-1] == pytest.approx(res.similarity)
