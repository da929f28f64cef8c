"""turbo and style modes, paired negative, beam, confidence and token budget (tiny models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from image2prompt import Config, Interrogator, SearchSettings
from image2prompt.cache import EmbeddingCache
from image2prompt.models.clip import load_clip
from image2prompt.prompt.subject import restates_subject, subject_words
from image2prompt.render import weighted_prompt
from image2prompt.search import emphasis_weight, weak_threshold
from image2prompt.vocab import load_folder_pack


@pytest.fixture(scope="module")
def enc(tiny_open_clip: Path):
    return load_clip(f"local-dir:{tiny_open_clip}", device="cpu")


def make(enc, vocab_dir: Path, cache: Path, **cfg) -> Interrogator:
    return Interrogator(enc, None, load_folder_pack(vocab_dir), EmbeddingCache(cache, download=False),
                        Config(caption_model=None, **cfg))


S = SearchSettings


@pytest.fixture(scope="module")
def ci(enc, small_vocab_dir: Path, tmp_path_factory):
    return make(enc, small_vocab_dir, tmp_path_factory.mktemp("c"))


def test_turbo_scores_fewer_tokens_and_stays_close_to_best(ci, enc, images):
    sims_best, sims_turbo, tok_best, tok_turbo = [], [], 0, 0
    for i, img in enumerate(images[:4]):
        t0 = enc.tokens_encoded
        b = ci.interrogate(img, "best", caption=f"a picture {i}")
        t1 = enc.tokens_encoded
        t = ci.interrogate(img, "turbo", caption=f"a picture {i}")
        tok_best += t1 - t0
        tok_turbo += enc.tokens_encoded - t1
        sims_best.append(b.similarity)
        sims_turbo.append(t.similarity)
        assert t.mode == "turbo" and t.prompt.startswith(f"a picture {i}")
    assert tok_turbo < tok_best
    assert np.mean(sims_turbo) >= np.mean(sims_best) - 0.02 * abs(np.mean(sims_best))


def test_turbo_keep_narrows_the_search_after_the_first_step(enc, small_vocab_dir: Path, tmp_path: Path, images):
    """SearchSettings.keep reaches the chain: with 3 phrases kept after the first step, the search
    scores far fewer tokens than with the whole pool."""
    ci = make(enc, small_vocab_dir, tmp_path)
    ci.prepare()  # tables first, so only the searches are counted
    t0 = enc.tokens_encoded
    a = ci.interrogate(images[0], "turbo", caption="a picture")
    t1 = enc.tokens_encoded
    b = ci.interrogate(images[0], "turbo", caption="a picture", settings=S(keep=3))
    assert enc.tokens_encoded - t1 < (t1 - t0) / 2
    assert a.mode == b.mode == "turbo" and b.prompt.startswith("a picture")


def test_style_mode_excludes_the_caption_and_subject_phrases(enc, small_vocab_dir: Path, tmp_path: Path, images):
    # A user style list that contains the subject itself and phrases that restate it.
    style_extra = tmp_path / "props.txt"
    style_extra.write_text("a red fox in the snow\nfox fur texture\nsnowy field\nrim lighting\nbokeh\n")
    ci = Interrogator(enc, None, load_folder_pack(small_vocab_dir), EmbeddingCache(tmp_path / "c", download=False),
                      Config(caption_model=None, vocab=(str(small_vocab_dir), str(style_extra))))
    ci.vocab = ci.vocab.with_table(__import__("image2prompt").vocab.PhraseTable.from_lines(
        "props", style_extra.read_text().splitlines()))
    # style mode draws on the style pack plus mediums/movements/artists; add our list to that pool too
    idx = ci.style_indexes()
    pack = idx[0].pack.with_table(ci.vocab["props"])
    for index in idx:
        index.pack = pack
    caption = "a red fox in the snow"
    singles = []
    for img in images[:4]:
        r = ci.interrogate(img, "style", caption=caption)
        singles.append(r)
        assert r.mode == "style" and r.prompt
        feats = [f[0] for f in ci.image_features([img])]  # the image itself, not the projected features
        assert r.similarity == pytest.approx(float(ci.similarity(feats, [r.prompt])[0]), abs=1e-6)
        assert caption not in r.prompt
        texts = [p.text for p in r.phrases]
        assert "a red fox in the snow" not in texts and "fox fur texture" not in texts and "snowy field" not in texts
        assert all(not restates_subject(t, subject_words(caption)) for t in texts)
        assert {p.category for p in r.phrases} <= set(pack.categories()) | {"flavors"}  # + the active pack's
    batch = list(ci.interrogate_batch(images[:4], "style", captions=[caption] * 4))
    assert [r.prompt for r in batch] == [r.prompt for r in singles]
    assert [r.similarity for r in batch] == pytest.approx([r.similarity for r in singles], abs=1e-6)


def test_subject_words():
    assert subject_words("a painting of a red fox sitting in the snow") == {"red", "fox", "snow"}
    assert restates_subject("foxes at dusk", frozenset({"fox"}))
    assert not restates_subject("rim lighting", frozenset({"fox"}))


def test_paired_negative_reuses_the_features(ci, enc, images):
    r = ci.interrogate(images[0], "fast", caption="a photo", negative=True)
    alone = ci.interrogate(images[0], "negative")
    assert r.negative is not None and r.negative.mode == "negative"
    assert r.negative.prompt == alone.prompt
    assert r.negative.similarity < r.similarity


def test_beam_one_equals_default_and_beam_two_never_worse_in_chain(enc, small_vocab_dir: Path, tmp_path: Path, images):
    cache = tmp_path / "c"
    ci = make(enc, small_vocab_dir, cache)
    for _i, img in enumerate(images[:2]):
        a = ci.interrogate(img, "best", caption="a thing")
        assert ci.interrogate(img, "best", caption="a thing", settings=S(beam=1)).prompt == a.prompt
        assert ci.interrogate(img, "best", caption="a thing", settings=S(beam=2)).similarity >= a.similarity - 1e-6


def test_confidence_fields(ci, images):
    r = ci.interrogate(images[1], "fast", caption="a thing")
    assert r.match_strength is not None and isinstance(r.weak_match, bool)
    n = len(ci.vocab["flavors"].labels)
    assert r.weak_match == (r.match_strength < weak_threshold(SearchSettings().weak_z, n))
    for p in r.phrases:
        assert p.margin is not None and 0.9 <= p.weight <= 1.3
    # the top fast phrases are the best of the merged pool: above their category median
    assert r.phrases[0].margin > 0


def test_weak_match_flag_follows_the_threshold(enc, small_vocab_dir: Path, tmp_path: Path, images):
    ci = make(enc, small_vocab_dir, tmp_path / "c")
    assert ci.interrogate(images[0], "fast", caption="x", settings=S(weak_z=1e9)).weak_match
    assert not ci.interrogate(images[0], "fast", caption="x", settings=S(weak_z=-1e9)).weak_match


@pytest.mark.parametrize("z,w", [(2.0, 1.0), (6.0, 1.2), (100.0, 1.3), (-10.0, 0.9), (3.0, 1.05)])
def test_emphasis_rule(z, w):
    assert emphasis_weight(z) == pytest.approx(w)


def test_weighted_prompt_format(ci, images):
    r = ci.interrogate(images[2], "classic", caption="a thing")
    out = weighted_prompt(r)
    assert out.startswith("a thing")
    for p in r.phrases:
        if p.weight != 1.0:
            assert f"({p.text}:{p.weight:.2f})" in out
        else:
            assert p.text in out


@pytest.mark.parametrize("mode", ["fast", "classic", "best", "turbo", "negative"])
def test_max_tokens_bounds_every_mode(enc, small_vocab_dir: Path, tmp_path: Path, images, mode):
    ci = make(enc, small_vocab_dir, tmp_path / "c")
    r = ci.interrogate(images[0], mode, caption="a small red thing", settings=S(max_tokens=24))
    assert r.token_count <= 22  # a hard budget in every mode (the reference let chains run past it)


def test_long_prompts_and_chunks(enc, small_vocab_dir: Path, tmp_path: Path, images):
    ci = make(enc, small_vocab_dir, tmp_path / "c")
    long = S(max_tokens=160, chunks=True)
    caption = "a very detailed description of a scene with many words in it, " * 3
    r = ci.interrogate(images[0], "fast", caption=caption.strip(", "), settings=long)
    assert 75 < r.token_count <= 158
    chunks = r.chunks
    assert len(chunks) >= 2 and all(ci.count_tokens(c) <= 75 for c in chunks)
    assert ", ".join(chunks) == r.prompt
    best = ci.interrogate(images[0], "best", caption="a thing", settings=long)
    assert best.token_count <= 158


def test_multi_encoder_scoring(tiny_open_clip: Path, tiny_hf_clip: Path, small_vocab_dir: Path, tmp_path: Path, images):
    a = load_clip(f"local-dir:{tiny_open_clip}", device="cpu")
    b = load_clip(str(tiny_hf_clip), device="cpu")
    pack = load_folder_pack(small_vocab_dir)
    cache = EmbeddingCache(tmp_path, download=False)
    both = Interrogator([a, b], None, pack, cache, Config(caption_model=None))
    ia = Interrogator(a, None, pack, cache, Config(caption_model=None))
    ib = Interrogator(b, None, pack, cache, Config(caption_model=None))
    for mode in ("best", "classic", "fast", "negative", "turbo", "style"):
        r = both.interrogate(images[0], mode, caption="a thing")
        assert r.prompt and " + " in r.clip_model
    r = both.interrogate(images[1], "fast", caption="a thing")
    fa = [ia.image_features([images[1]])[0][0]]
    fb = [ib.image_features([images[1]])[0][0]]
    expected = (ia.similarity(fa, [r.prompt])[0] + ib.similarity(fb, [r.prompt])[0]) / 2
    assert r.similarity == pytest.approx(expected, abs=1e-6)
    # each encoder has its own cache files
    names = {p.name for p in tmp_path.iterdir()}
    assert any(n.startswith("local_tiny-open-clip") for n in names)
    assert any(n.startswith("local_tiny-hf-clip") for n in names)
