"""Prefix-cached scoring must equal a full encode (max abs difference <= 1e-5 in fp32)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from image2prompt.models.clip import load_clip

WORDS = ("dog cat painting oil portrait neon city night forest mist golden hour photo of a the by "
         "artstation trending detailed 8k render unreal engine soft light moody").split()
PHRASES = ["highly detailed", "by Claude Monet", "trending on artstation", "8k", "x", "octane render",
           "!!! very coherent!!!", "(masterpiece)", "'s style", "café au lait", "naïve art", "—dash",
           "a b c d e f g h i j k l m n o p", "", "1 2 3", "hello,world"]


def random_prompt(rng: random.Random, n_words: int) -> str:
    parts, words = [], 0
    while words < n_words:
        k = rng.randint(1, 4)
        parts.append(" ".join(rng.choice(WORDS) for _ in range(k)))
        words += k
    return ", ".join(parts)


PREFIXES = [
    "a photo of a dog",
    "a photo of a dog!!!",          # punctuation merges with the comma: "!!!," is run with each phrase
    "a photo, ( ( brown skin ) )",  # the vocabulary's weighted phrases end in ")", which merges too
    "a photo, walt disney (1937)",
    "a photo of a dog,",            # ends with a comma
    "a café in paris",              # non-ASCII prefix: verified phrase by phrase
    "A Photo   Of  Spaces ",        # case and whitespace clean-up
    "",
]


@pytest.fixture(scope="module", params=["open_clip", "transformers"])
def encoder(request, tiny_open_clip: Path, tiny_hf_clip: Path):
    name = f"local-dir:{tiny_open_clip}" if request.param == "open_clip" else str(tiny_hf_clip)
    enc = load_clip(name, device="cpu")
    assert enc.prefix_scorer() is not None
    return enc


def full(enc, prefix, phrases):
    return enc.encode_texts([prefix + ", " + p for p in phrases])


@pytest.mark.parametrize("prefix", PREFIXES)
def test_prefix_cached_equals_full_encode(encoder, prefix):
    got = encoder.encode_extensions(prefix, PHRASES)
    assert np.abs(got - full(encoder, prefix, PHRASES)).max() <= 1e-5


@pytest.mark.parametrize("seed", range(6))
def test_random_and_long_prompts(encoder, seed):
    rng = random.Random(seed)
    prefix = random_prompt(rng, rng.choice([3, 20, 60, 70, 74, 76, 90]))  # some reach or pass 77 tokens
    phrases = [random_prompt(rng, rng.randint(1, 6)) for _ in range(40)] + PHRASES
    got = encoder.encode_extensions(prefix, phrases)
    assert np.abs(got - full(encoder, prefix, phrases)).max() <= 1e-5


def test_truncation_matches_the_tokenizer(encoder):
    prefix = ", ".join(["golden hour"] * 36)  # 107 tokens: every candidate truncates to the same text
    assert encoder.count_tokens(prefix) > 77
    got = encoder.encode_extensions(prefix, ["a", "b c d"])
    ref = full(encoder, prefix, ["a", "b c d"])
    assert np.abs(got - ref).max() <= 1e-5
    np.testing.assert_allclose(got[0], got[1], atol=1e-6)
    near = ", ".join(["golden hour"] * 24)  # 71 tokens: only part of the suffix fits
    got = encoder.encode_extensions(near, ["a b c d e f g h", "a b c d e f g"])
    assert np.abs(got - full(encoder, near, ["a b c d e f g h", "a b c d e f g"])).max() <= 1e-5


def test_a_prefix_ending_in_punctuation_is_cached_not_encoded_in_full(encoder):
    scorer = encoder.prefix_scorer()
    before = scorer.fallbacks
    for prefix in ("a photo", "a photo!!!", "a photo, ( ( brown skin ) )"):
        got = encoder.encode_extensions(prefix, ["plain", "words"])
        assert np.abs(got - full(encoder, prefix, ["plain", "words"])).max() <= 1e-5
    assert scorer.fallbacks == before
    # The prefix's tokens are run once, not once per phrase: a full encode of both texts
    # would run about twice the prefix's length.
    prefix = "a photo of a dog in a park at night, ( ( brown skin ) )"
    n_prefix = encoder.count_tokens(prefix)
    t0 = encoder.tokens_encoded
    encoder.encode_extensions(prefix, ["plain", "words"])
    assert encoder.tokens_encoded - t0 < 2 * n_prefix


def test_a_prefix_without_a_clean_split_falls_back_to_full_encodes(encoder, monkeypatch):
    scorer = encoder.prefix_scorer()
    monkeypatch.setattr(scorer, "_split", lambda prefix, ids: None)
    before = scorer.fallbacks
    got = encoder.encode_extensions("a photo!!!", ["plain", "words"])
    assert scorer.fallbacks == before + 2
    assert np.abs(got - full(encoder, "a photo!!!", ["plain", "words"])).max() <= 1e-5


def test_fewer_tokens_than_a_full_encode(encoder):
    prefix = random_prompt(random.Random(1), 40)
    phrases = [random_prompt(random.Random(i), 3) for i in range(100)]
    t0 = encoder.tokens_encoded
    encoder.encode_extensions(prefix, phrases)
    cached = encoder.tokens_encoded - t0
    t0 = encoder.tokens_encoded
    full(encoder, prefix, phrases)
    assert cached * 4 < encoder.tokens_encoded - t0


def test_many_prefixes_share_batches_and_equal_full_encodes(encoder):
    rng = random.Random(7)
    requests = [(random_prompt(rng, n), [random_prompt(rng, rng.randint(1, 4)) for _ in range(15)] + PHRASES[:6])
                for n in (2, 30, 74, 90)] + [("a photo!!!", PHRASES[:4])]
    outs = encoder.prefix_scorer().encode_many(requests)
    for (prefix, phrases), got in zip(requests, outs):
        assert np.abs(got - full(encoder, prefix, phrases)).max() <= 1e-5


def test_suffix_batches_are_bounded_by_the_memory_budget_not_the_candidate_count(encoder):
    scorer = encoder.prefix_scorer()
    saved = encoder.memory_budget
    encoder.memory_budget = 2_000_000
    try:
        prefix = random_prompt(random.Random(2), 30)
        peaks = []
        for n in (200, 2000):
            scorer.peak_rows = 0
            phrases = [f"phrase number {i}" for i in range(n)]
            encoder.encode_extensions(prefix, phrases)
            peaks.append(scorer.peak_rows)
        limit = encoder.rows_for(3, len(encoder.tokenizer.encode(prefix)) + 1)
        assert peaks[0] == peaks[1] <= limit < 200
    finally:
        encoder.memory_budget = saved


class CountingTokenizer:
    """The encoder's tokenizer, recording every text it is asked to tokenize."""

    def __init__(self, tok) -> None:
        self._tok = tok
        self.texts: list[str] = []

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def encode(self, text: str) -> list[int]:
        self.texts.append(text)
        return self._tok.encode(text)


def test_phrase_ids_from_the_caller_are_used_not_retokenized(encoder, monkeypatch):
    scorer = encoder.prefix_scorer()
    counting = CountingTokenizer(scorer.tok)
    monkeypatch.setattr(scorer, "tok", counting)
    prefix = "a photo of a dog"
    # The ids given for a phrase are the ones scored: here, on purpose, another phrase's ids.
    ids = {"zq-placeholder-one": encoder.tokenizer.encode("golden hour"),
           "zq-placeholder-two": encoder.tokenizer.encode("by Claude Monet")}
    got = encoder.encode_extensions(prefix, list(ids) + ["zq-not-given"], phrase_ids=ids)
    ref = full(encoder, prefix, ["golden hour", "by Claude Monet", "zq-not-given"])
    assert np.abs(got - ref).max() <= 1e-5
    assert "zq-placeholder-one" not in counting.texts and "zq-placeholder-two" not in counting.texts
    assert "zq-not-given" in counting.texts  # phrases missing from phrase_ids are tokenized
    outs = encoder.encode_extensions_many([(prefix, ["zq-placeholder-one"]), ("", ["zq-placeholder-two"])],
                                          phrase_ids=ids)
    assert np.abs(outs[0] - ref[:1]).max() <= 1e-5
    assert np.abs(outs[1] - full(encoder, "", ["by Claude Monet"])).max() <= 1e-5


def test_the_encoder_keeps_no_token_ids_behind_the_callers_back(encoder):
    scorer = encoder.prefix_scorer()
    assert not hasattr(encoder, "remember_token_ids") and not hasattr(scorer, "remember")
    before = dict(scorer._suffix)
    feats, ids = encoder.embed_labels(["zq never seen one", "zq never seen two"])
    assert feats.shape == (2, encoder.embed_dim)
    assert ids == [encoder.tokenizer.encode("zq never seen one"), encoder.tokenizer.encode("zq never seen two")]
    assert dict(scorer._suffix).keys() == before.keys()


def test_the_suffix_cache_is_a_bounded_lru(encoder, monkeypatch):
    from collections import OrderedDict

    from image2prompt.models.prefix import SUFFIX_CACHE_SIZE

    scorer = encoder.prefix_scorer()
    assert SUFFIX_CACHE_SIZE == 65_536 and scorer.cache_size == SUFFIX_CACHE_SIZE
    monkeypatch.setattr(scorer, "cache_size", 50)
    monkeypatch.setattr(scorer, "_suffix", OrderedDict())
    prefix = "a photo of a dog"
    for step in range(4):
        phrases = [f"phrase {step} {i}" for i in range(60)]
        got = encoder.encode_extensions(prefix, phrases)
        assert len(scorer._suffix) <= 50
        assert np.abs(got - full(encoder, prefix, phrases)).max() <= 1e-5
    # Least recently used goes first: a phrase used again survives newer ones.
    keep = next(iter(scorer._suffix))
    encoder.encode_extensions(prefix, [keep])
    encoder.encode_extensions(prefix, [f"newer {i}" for i in range(49)])
    assert keep in scorer._suffix and len(scorer._suffix) == 50
    encoder.encode_extensions(prefix, [keep])  # used again: now the newest
    encoder.encode_extensions(prefix, ["newest"])
    assert keep in scorer._suffix and "newer 0" not in scorer._suffix and len(scorer._suffix) == 50
    encoder.encode_extensions(prefix, [f"later {i}" for i in range(50)])
    assert keep not in scorer._suffix and len(scorer._suffix) == 50
