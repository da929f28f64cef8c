from __future__ import annotations

import pytest

from image2prompt.prompt import (
    at_limit,
    classic_prompt,
    clean_caption,
    cut_to_fit,
    fast_prompt,
    fits,
    split_into_chunks,
    truncate_to_fit,
)


def words(text: str) -> int:
    """A toy tokenizer: one token per word and one per comma."""
    return len(text.replace(",", " ,").split())


def test_truncate_counts_the_separators():
    # budget 75 text tokens for max_tokens=77
    caption = " ".join(["w"] * 70)
    text = caption + ", a b, c, d"
    # caption(70) + ", a b"(3) = 73 fits; + ", c"(2) = 75 fits; + ", d" = 77 does not.
    assert truncate_to_fit(text, words) == caption + ", a b, c"
    assert words(truncate_to_fit(text, words)) <= 75


def test_truncate_keeps_what_fits_and_cuts_an_over_budget_caption_at_a_word():
    assert truncate_to_fit("a b c, d", words, max_tokens=5) == "a b c"
    assert truncate_to_fit("a b c, d", words, max_tokens=4) == "a b"  # the budget is hard, caption included
    assert truncate_to_fit("a, b, c", words, max_tokens=7) == "a, b, c"
    assert truncate_to_fit("a, b, c", words, max_tokens=6) == "a, b"


def test_cut_to_fit_cuts_at_words_and_drops_a_trailing_separator():
    assert cut_to_fit("one two three", words, max_tokens=5) == "one two three"
    assert cut_to_fit("one two three", words, max_tokens=4) == "one two"
    assert cut_to_fit("one, two three", words, max_tokens=4) == "one"  # not "one,"
    assert cut_to_fit("one two", words, max_tokens=2 + 0 + 1) == "one"
    assert cut_to_fit("verylongword", lambda t: 3 * len(t.split()), max_tokens=4) == ""


def test_an_empty_caption_leaves_no_leading_separator():
    assert fast_prompt("", ["x", "y"]) == "x, y"
    assert classic_prompt("", "a painting", "by X", "trending", "cubism", ["f1"]) == \
        "a painting by X, trending, cubism, f1"
    assert truncate_to_fit(fast_prompt("", ["x", "y"]), words, max_tokens=3) == "x"


def test_fits_and_at_limit():
    assert fits("a b c", words, max_tokens=5)
    assert not fits("a b c d", words, max_tokens=5)
    assert at_limit("a b c", words, max_tokens=5)
    assert not at_limit("a b", words, max_tokens=5)
    with pytest.raises(ValueError):
        fits("a", words, max_tokens=2)


def test_classic_layout_drops_medium_when_caption_starts_with_it():
    assert classic_prompt("a dog", "a painting", "by X", "trending", "cubism", ["f1", "f2"]) == \
        "a dog, a painting by X, trending, cubism, f1, f2"
    assert classic_prompt("a painting of a dog", "a painting", "by X", "t", "m", ["f"]) == \
        "a painting of a dog by X, t, m, f"


def test_fast_prompt():
    assert fast_prompt("cap", ["a", "b"]) == "cap, a, b"
    assert fast_prompt("cap", []) == "cap"


def test_split_into_chunks_keeps_parts_whole():
    text = ", ".join(["a b c"] * 5)
    chunks = split_into_chunks(text, words, chunk_tokens=8)
    assert chunks == ["a b c, a b c", "a b c, a b c", "a b c"]
    assert ", ".join(chunks) == text


@pytest.mark.parametrize("raw,clean", [
    ("arafed man sitting on a bench", "man sitting on a bench"),
    ("an araffe woman with a hat", "a woman with a hat"),
    ("a dog dog dog on the the grass", "a dog on the grass"),
    ("there is a cat", "there is a cat"),
    ("an apple", "an apple"),
])
def test_clean_caption(raw, clean):
    assert clean_caption(raw) == clean


def _truncate_one_by_one(text: str, count, max_tokens: int) -> str:
    """The rule truncate_to_fit bisects: add parts one at a time until one does not fit."""
    parts = text.split(", ")
    kept = cut_to_fit(parts[0], count, max_tokens)
    if kept != parts[0]:
        return kept
    for part in parts[1:]:
        candidate = kept + ", " + part if kept else part
        if not fits(candidate, count, max_tokens):
            break
        kept = candidate
    return kept


def test_bisection_keeps_exactly_what_adding_parts_one_by_one_keeps() -> None:
    import random

    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    counters = {"words": words, "clip": lambda t: len(tok.encode(t))}
    rng = random.Random(0)
    vocab = ["oil painting", "by greg rutkowski", "trending on artstation", "8k", "a", "", "sharp focus",
             "highly detailed, intricate", "ünïcode", "x" * 30, "a photo of a cat sitting on a mat"]
    for _trial in range(300):
        caption = rng.choice(["", "a cat", "a painting of a woman sitting on a table"])
        text = ", ".join([caption] + [rng.choice(vocab) for _ in range(rng.randint(0, 40))])
        for name, count in counters.items():
            budget = rng.randint(3, 90)
            assert truncate_to_fit(text, count, budget) == _truncate_one_by_one(text, count, budget), \
                (name, budget, text)
