from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from image2prompt import Config, Interrogator, Result, SearchSettings
from image2prompt.cache import EmbeddingCache
from image2prompt.models.clip import load_clip
from image2prompt.vocab import load_folder_pack


@pytest.fixture(scope="module")
def interrogator(tiny_open_clip: Path, tiny_blip: Path, small_vocab_dir: Path, tmp_path_factory):
    return Interrogator.load(Config(
        clip_model=f"local-dir:{tiny_open_clip}", caption_model=f"local-dir:{tiny_blip}", device="cpu",
        cache_dir=str(tmp_path_factory.mktemp("cache")), vocab=(str(small_vocab_dir),),
    ))


@pytest.mark.parametrize("mode", ["best", "classic", "fast", "negative"])
def test_every_mode_gives_a_scored_result(interrogator: Interrogator, images, mode):
    r = interrogator.interrogate(images[0], mode)
    assert isinstance(r, Result) and r.mode == mode and r.prompt
    assert (r.token_count is not None and r.token_count <= 75) or mode in ("best", "negative")
    assert -1.0 <= r.similarity <= 1.0
    assert all(-1.0 <= p.score <= 1.0 and p.category for p in r.phrases)
    for p in r.phrases:
        assert p.text in r.prompt
        assert p.hypothesis == (p.category == "artists")
    if mode == "negative":
        assert r.caption is None
    else:
        assert r.caption and r.prompt.startswith(r.caption)
    doc = json.loads(r.to_json())
    assert doc["prompt"] == r.prompt and doc["phrases"][0]["score"] == r.phrases[0].score


def test_similarity_is_the_final_prompts(interrogator: Interrogator, images):
    r = interrogator.interrogate(images[1], "fast", caption="a red square")
    feats = [f[0] for f in interrogator.image_features([images[1]])]
    assert r.similarity == pytest.approx(float(interrogator.similarity(feats, [r.prompt])[0]), abs=1e-6)
    assert r.caption == "a red square"


@pytest.mark.parametrize("mode", ["fast", "classic"])
def test_unscored_prompts_are_the_same_and_skip_the_text_encode(interrogator: Interrogator, images, mode):
    interrogator.prepare()  # tables first, so only the searches are counted
    enc = interrogator.clips[0]
    before = enc.tokens_encoded
    scored = interrogator.interrogate(images[1], mode, caption="a red square")
    middle = enc.tokens_encoded
    unscored = interrogator.interrogate(images[1], mode, caption="a red square",
                                        settings=SearchSettings(score_prompt=False))
    assert unscored.similarity is None and scored.similarity is not None
    assert unscored.prompt == scored.prompt
    assert [p.text for p in unscored.phrases] == [p.text for p in scored.phrases]
    assert middle - before > 0 and enc.tokens_encoded == middle  # the only text encode was the score


def test_negative_terms_are_the_least_similar(interrogator: Interrogator, images):
    r = interrogator.interrogate(images[2], "negative")
    pos = interrogator.interrogate(images[2], "fast", caption="x")
    assert r.similarity < pos.similarity
    flavor_scores = [p.score for p in interrogator.analyze(images[2], top_n=1000).categories["flavors"]]
    median = float(np.median(flavor_scores))
    chosen = [p.score for p in r.phrases if p.category == "flavors"]
    assert chosen and np.mean(chosen) < median


def test_results_are_deterministic_and_batch_independent(interrogator: Interrogator, images):
    caps = ["a photo", "a drawing", "a painting"]
    batch = list(interrogator.interrogate_batch(images[:3], "best", captions=caps, sources=["a", "b", "c"]))
    one = [interrogator.interrogate(im, "best", caption=c) for im, c in zip(images[:3], caps)]
    assert [r.prompt for r in batch] == [r.prompt for r in one]
    assert [r.source for r in batch] == ["a", "b", "c"]


def test_batch_captions_generated_when_missing(interrogator: Interrogator, images):
    rs = list(interrogator.interrogate_batch(images[:2], "fast", captions=["given", None]))
    assert rs[0].caption == "given" and rs[0].caption_model is None  # not credited to the captioner
    assert rs[1].caption == interrogator.caption([images[1]])[0]
    assert rs[1].caption_model == interrogator.caption_name is not None


def test_batch_arguments_are_checked_at_the_call(interrogator: Interrogator, images):
    with pytest.raises(ValueError, match="2 captions given for 3 images"):
        interrogator.interrogate_batch(images[:3], "fast", captions=["a", "b"])


def test_analyze_reports_every_category(interrogator: Interrogator, images):
    a = interrogator.analyze(images[0], top_n=3)
    assert set(a.categories) == {"artists", "flavors", "mediums", "movements", "trendings"}
    for _cat, phrases in a.categories.items():
        assert len(phrases) == 3
        scores = [p.score for p in phrases]
        assert scores == sorted(scores, reverse=True)
    assert all(p.hypothesis for p in a.categories["artists"])


def test_unknown_mode(interrogator: Interrogator, images):
    with pytest.raises(ValueError, match="unknown mode"):
        interrogator.interrogate(images[0], "creative")


def test_cache_hit_computes_nothing_and_tampering_recomputes(tiny_open_clip: Path, small_vocab_dir: Path,
                                                             tmp_path: Path, images):
    enc = load_clip(f"local-dir:{tiny_open_clip}", device="cpu")
    calls = []
    original = enc.embed_labels

    def counting(texts, **kw):
        calls.append(len(texts))
        return original(texts, **kw)

    enc.embed_labels = counting  # type: ignore[method-assign]
    pack = load_folder_pack(small_vocab_dir)
    cache = EmbeddingCache(tmp_path, download=False)

    first = Interrogator(enc, None, pack, cache, Config(caption_model=None))
    first.prepare()
    built = sum(calls)
    assert built == sum(len(pack[c]) for c in pack)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == len(pack.categories())

    calls.clear()
    second = Interrogator(enc, None, pack, cache, Config(caption_model=None))
    second.prepare()
    assert calls == []
    np.testing.assert_array_equal(second.indexes[0].embeds("flavors"), first.indexes[0].embeds("flavors"))

    flav = next(tmp_path.glob("*_flavors_*.safetensors"))  # not the reference's list: named by its hash
    flav.write_bytes(flav.read_bytes()[:100])  # truncated
    calls.clear()
    third = Interrogator(enc, None, pack, cache, Config(caption_model=None))
    third.prepare()
    assert calls == [len(pack["flavors"])]
    np.testing.assert_allclose(third.indexes[0].embeds("flavors"), first.indexes[0].embeds("flavors"), atol=1e-3)


def test_transformers_backend_runs_every_mode(tiny_hf_clip: Path, small_vocab_dir: Path, tmp_path: Path, images):
    ci = Interrogator(load_clip(str(tiny_hf_clip), device="cpu"), None, load_folder_pack(small_vocab_dir),
                      EmbeddingCache(tmp_path, download=False), Config(caption_model=None))
    for mode in ("best", "classic", "fast", "negative"):
        assert ci.interrogate(images[3], mode, caption="a photo").prompt


def test_light_modules_import_without_torch():
    code = (
        "import sys, image2prompt, image2prompt.vocab, image2prompt.cache, image2prompt.prompt, "
        "image2prompt.search, image2prompt.io, image2prompt.results, image2prompt.index, image2prompt.models; "
        "heavy = [m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_shared_across_threads_gives_the_same_results(tiny_open_clip: Path, small_vocab_dir: Path, tmp_path: Path,
                                                       images):
    """One Interrogator used from several threads at once (tables built lazily under contention)."""
    from concurrent.futures import ThreadPoolExecutor

    ci = Interrogator(load_clip(f"local-dir:{tiny_open_clip}", device="cpu"), None,
                      load_folder_pack(small_vocab_dir), EmbeddingCache(tmp_path, download=False),
                      Config(caption_model=None))
    jobs = [(img, mode) for img in images[:3] for mode in ("fast", "classic", "best", "negative")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda job: ci.interrogate(job[0], job[1], caption="a thing").prompt, jobs))
    sequential = [ci.interrogate(img, mode, caption="a thing").prompt for img, mode in jobs]
    assert parallel == sequential


def test_encode_takes_a_caption_flag_per_image(interrogator: Interrogator, images):
    feats = interrogator.encode(images[:3], [None, None, "given"], generate_captions=[True, False, False])
    assert feats[0].caption and feats[0].caption_model == interrogator.caption_name
    assert feats[1].caption is None and feats[2].caption == "given"
    with pytest.raises(ValueError, match="2 caption flags given for 3 images"):
        interrogator.encode(images[:3], generate_captions=[True, False])


def test_analysis_says_whether_the_match_is_weak(interrogator: Interrogator, images):
    analysis = interrogator.analyze(images[0])
    result = interrogator.interrogate(images[0], "fast", caption="x")
    assert analysis.match_strength == pytest.approx(result.match_strength)
    assert analysis.weak_match == result.weak_match


def test_a_given_caption_is_one_line_whatever_it_holds(interrogator: Interrogator, images):
    """NUL, CR, LF, tabs and bidi overrides in a typed caption never reach the prompt (CLI,
    batch manifests and the server all pass captions through encode)."""
    feats = interrogator.encode(images[:1], ["a red\r\nfox\x00 in\tsnow \u202e"], generate_captions=False)
    assert feats[0].caption == "a red fox in snow"
    result = interrogator.interrogate(images[0], "fast", caption="a red\nfox")
    assert "\n" not in result.prompt and result.prompt.startswith("a red fox")


class _ChatCaptioner:
    """A chat model's answers, as a VLM gives them (``chat = True``)."""

    name = "chat-test"
    chat = True

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers

    def caption(self, images, *, batch_size: int = 16) -> list[str]:
        return self.answers[: len(images)]


def test_a_chat_captioners_answers_are_cleaned(interrogator: Interrogator, images):
    chat = Interrogator(interrogator.clips, _ChatCaptioner([
        "<think>The user wants a caption.</think>This image shows a red barn in snow.",
        "a cat on a mat mat mat mat mat\nsecond line",
    ]), interrogator.vocab, interrogator.cache, interrogator.config)
    assert chat.caption(images[:2]) == ["a red barn in snow", "a cat on a mat"]
    plain = Interrogator(interrogator.clips, _ChatCaptioner(["This image shows a red barn"]), interrogator.vocab,
                         interrogator.cache, interrogator.config)
    plain.captioner.chat = False  # a captioner that does not say it chats keeps its words
    assert plain.caption(images[:1]) == ["This image shows a red barn"]


def test_a_chat_captions_own_words_are_not_added_again(interrogator: Interrogator, images):
    """The merge: a phrase a VLM's caption already says is kept out of the search's pools (typed and
    BLIP captions are searched as before)."""
    from image2prompt.settings import SearchSettings

    fast = SearchSettings(mode="fast", floor=None)
    plain = interrogator.search_indexed(interrogator.encode(images[:1], ["a picture"], generate_captions=False), fast)
    before = next(plain)[1]
    said = before.phrases[0].text  # the best phrase, which the caption will now say itself
    caption = f"a picture, {said}"
    chat = Interrogator(interrogator.clips, _ChatCaptioner([caption]), interrogator.vocab, interrogator.cache,
                        interrogator.config)
    feats = chat.encode(images[:1], generate_captions=True)
    assert feats[0].caption == caption and feats[0].caption_model == "chat-test"
    after = next(chat.search_indexed(feats, fast))[1]
    assert said not in [p.text for p in after.phrases]
    typed = next(chat.search_indexed(chat.encode(images[:1], [caption], generate_captions=False), fast))[1]
    assert said in [p.text for p in typed.phrases]  # a typed caption: the phrase may be added, as before


def test_caption_mode_is_the_caption_alone_within_the_budget(interrogator: Interrogator, images):
    from image2prompt.settings import SearchSettings

    feats = interrogator.encode(images[:1], ["a red barn in the snow, with a small dog at the door"],
                                generate_captions=False)
    r = next(interrogator.search_indexed(feats, SearchSettings(mode="caption")))[1]
    assert (r.mode, r.prompt, r.caption, r.phrases) == ("caption", "a red barn in the snow, with a small dog at the door",
                                                        "a red barn in the snow, with a small dog at the door", [])
    short = next(interrogator.search_indexed(feats, SearchSettings(mode="caption", max_tokens=9)))[1]
    assert short.prompt == "a red barn in the snow" and short.caption_truncated  # cut where the clause ends
