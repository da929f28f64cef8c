"""The stage API: encode, search, settings per call, fingerprints, traces, modes as plugins."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from image2prompt import Config, Features, Interrogator, SearchSettings
from image2prompt.cache import EmbeddingCache
from image2prompt.errors import CaptionRequired, SettingsError
from image2prompt.features import FeaturesError, features_from_arrow, features_to_arrow
from image2prompt.models.clip import load_clip
from image2prompt.modes import Outcome, Scored, Task, get_mode, mode_names, register_mode
from image2prompt.vocab import load_folder_pack
from tests.support import golden


@pytest.fixture(scope="module")
def ci(tiny_open_clip: Path, small_vocab_dir: Path, tmp_path_factory) -> Interrogator:
    return Interrogator(load_clip(f"local-dir:{tiny_open_clip}", device="cpu"), None,
                        load_folder_pack(small_vocab_dir),
                        EmbeddingCache(tmp_path_factory.mktemp("cache"), download=False), Config(caption_model=None))


# -- every mode gives the prompts it gave before the split ------------------------------------------


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(golden.GOLDEN.read_text(encoding="utf-8"))


def _check_case(got: list[dict], want: list[dict], name: str) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g["prompt"] == w["prompt"], f"{name} #{i}"
        assert g["phrases"] == w["phrases"], f"{name} #{i}"
        assert g["negative"] == w["negative"], f"{name} #{i}"
        assert g["chunks"] == w["chunks"], f"{name} #{i}"
        if w["similarity"] is None:
            assert g["similarity"] is None
        else:
            assert g["similarity"] == pytest.approx(w["similarity"], abs=2e-5), f"{name} #{i}"


@pytest.mark.parametrize("backend", ["open_clip", "transformers"])
def test_every_mode_gives_the_golden_prompts(backend, tiny_open_clip, tiny_hf_clip, small_vocab_dir, tmp_path,
                                             expected):
    clip_dir = tiny_open_clip if backend == "open_clip" else tiny_hf_clip
    got = golden.run_cases(clip_dir, small_vocab_dir, tmp_path)
    assert set(got) == set(expected[backend])
    for name in got:
        _check_case(got[name], expected[backend][name], f"{backend}/{name}")


# -- stages ------------------------------------------------------------------------------------------


def test_interrogate_is_encode_then_search(ci, images):
    settings = SearchSettings(mode="fast")
    feats = ci.encode(images[:3], ["a dog", "a cat", "a tree"], sources=["a", "b", "c"])
    assert [f.source for f in feats] == ["a", "b", "c"] and all(len(f) == 1 for f in feats)
    assert all(abs(np.linalg.norm(f[0]) - 1) < 1e-5 for f in feats)
    staged = sorted(ci.search(feats, settings), key=lambda r: r.source)
    composed = list(ci.interrogate_batch(images[:3], captions=["a dog", "a cat", "a tree"],
                                         sources=["a", "b", "c"], settings=settings))
    assert [r.prompt for r in staged] == [r.prompt for r in composed]
    assert [r.similarity for r in staged] == [r.similarity for r in composed]


@pytest.mark.parametrize("mode", ["best", "turbo", "classic", "fast", "negative", "style"])
def test_saved_and_loaded_features_give_identical_results(ci, images, tmp_path, mode):
    feats = ci.encode(images[:2], ["a photo of a dog", "a red square"], sources=["x.png", "y.png"])
    paths = [f.save(tmp_path / f"{i}.safetensors") for i, f in enumerate(feats)]
    loaded = [Features.load(p) for p in paths]
    assert all(a.equals(b) for a, b in zip(feats, loaded))
    settings = SearchSettings(mode=mode, negative=mode == "fast")
    a = [r.to_dict() for r in ci.search(feats, settings)]
    b = [r.to_dict() for r in ci.search(loaded, settings)]
    assert a == b


def test_features_round_trip_through_arrow(ci, images):
    pytest.importorskip("pyarrow")
    feats = ci.encode(images[:3], ["a", None, "c"], sources=["1", "2", None], generate_captions=False)
    back = features_from_arrow(features_to_arrow(feats))
    assert len(back) == 3 and all(a.equals(b) for a, b in zip(feats, back))


def test_bad_feature_files_fail_with_one_line(tmp_path, ci, images):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(FeaturesError, match="bad.safetensors: not an image2prompt features file"):
        Features.load(bad)
    with pytest.raises(FeaturesError, match="no such file"):
        Features.load(tmp_path / "missing.safetensors")
    other = Features([np.ones(7, np.float32) / 7 ** 0.5], ("some-other-model",), "a cat")
    with pytest.raises(FeaturesError, match="encoded with some-other-model"):
        ci.search([other], SearchSettings(mode="fast"))


def test_a_short_chain_is_yielded_before_a_long_one(ci, images):
    """Image 0 has a short caption (a chain of at least 8 steps); image 1's caption nearly fills
    the window, so its chain ends after one step. Its result comes first, with its source."""
    long_caption = "a photo of " + " ".join(["red"] * 70)
    assert 70 <= ci.count_tokens(long_caption) <= 74
    feats = ci.encode(images[:2], ["a dog", long_caption], sources=["slow.png", "quick.png"])
    order = [(i, r.source) for i, r in ci.search_indexed(feats, SearchSettings(mode="best"))]
    assert order == [(1, "quick.png"), (0, "slow.png")]
    batch = list(ci.interrogate_batch(images[:2], "best", captions=["a dog", long_caption], sources=["s", "q"]))
    assert [r.source for r in batch] == ["s", "q"]  # interrogate_batch keeps input order


# -- settings and fingerprints --------------------------------------------------------------------------


def test_settings_are_validated_with_one_clear_error():
    with pytest.raises(SettingsError, match="beam must be at least 1, got 0"):
        SearchSettings(beam=0)
    with pytest.raises(SettingsError, match="shortlist must be an integer, got 'many'"):
        SearchSettings(shortlist="many")
    with pytest.raises(SettingsError, match="unknown search setting\\(s\\): turbo_refresh"):
        SearchSettings().replace(turbo_refresh=3)
    with pytest.raises(SettingsError, match="keep must be a positive integer"):
        SearchSettings(keep=0)
    with pytest.raises(SettingsError, match="unknown mode 'creative'"):
        get_mode("creative")
    assert SearchSettings.from_dict(SearchSettings(beam=3).to_dict()) == SearchSettings(beam=3)
    assert len({SearchSettings(), SearchSettings(), SearchSettings(beam=2)}) == 2  # hashable


def test_min_flavors_above_max_flavors_is_refused():
    with pytest.raises(SettingsError, match=r"min_flavors \(50\) must not exceed max_flavors \(4\)"):
        SearchSettings(min_flavors=50, max_flavors=4)
    with pytest.raises(SettingsError, match="must not exceed max_flavors"):
        SearchSettings(min_flavors=33)  # over the default max, 32
    with pytest.raises(SettingsError, match="must not exceed max_flavors"):
        SearchSettings(max_flavors=4).replace(min_flavors=5)
    # The default min (8) is capped by a smaller max, as the CLI's --flavors MAX caps it.
    assert SearchSettings(max_flavors=4).min_flavors == 8
    assert SearchSettings(min_flavors=4, max_flavors=4).max_flavors == 4


def test_fingerprint_keys_settings_models_and_vocabulary(ci, images, tiny_open_clip, tmp_path):
    base = SearchSettings(mode="fast")
    assert ci.fingerprint(base) == ci.fingerprint(SearchSettings(mode="fast"))
    assert ci.fingerprint(base) != ci.fingerprint(base.replace(max_flavors=5))
    assert ci.fingerprint(base) != ci.fingerprint(base.replace(mode="classic"))
    smaller = ci.vocab.with_table(ci.vocab["mediums"].__class__.from_lines("mediums", ["a photograph"]))
    other = Interrogator(ci.clips, None, smaller, ci.cache, Config(caption_model=None))
    assert other.fingerprint(base) != ci.fingerprint(base)
    r = ci.interrogate(images[0], caption="a thing", settings=base)
    assert r.fingerprint == ci.fingerprint(base) and len(r.fingerprint) == 16
    from image2prompt import __version__

    assert r.version == __version__ and r.clip_model == ci.clip_name


def test_config_resolves_the_captioner_policy():
    assert Config().captioner == "blip-large"
    assert Config(low_vram=True).captioner == "blip-base"
    assert Config(caption_model="none").captioner is None and Config(caption_model=None).captioner is None
    assert Config(caption_model="git-large-coco", low_vram=True).captioner == "git-large-coco"


# -- traces ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["best", "turbo", "negative", "style"])
def test_trace_records_the_chain_and_the_top_phrases(ci, images, mode):
    plain = ci.interrogate(images[2], mode, caption="a picture of a thing")
    r = ci.interrogate(images[2], mode, caption="a picture of a thing",
                       settings=SearchSettings(trace=True, trace_top=4))
    assert r.prompt == plain.prompt and plain.trace is None
    t = r.trace
    assert t is not None and t.steps
    sims = [s.similarity for s in t.steps]
    if t.picked == "chain":
        assert [s.phrase for s in t.steps] == [p.text for p in r.phrases]
        assert sims[int(np.argmax(sims) if mode != "negative" else np.argmin(sims))] == pytest.approx(
            r.similarity, abs=1e-5) or mode == "style"
    assert set(t.top) == {"artists", "flavors", "mediums", "movements", "trendings"}
    for phrases in t.top.values():
        assert len(phrases) == 4 and [p.score for p in phrases] == sorted((p.score for p in phrases), reverse=True)
        assert all(p.margin is not None for p in phrases)
    json.loads(r.to_json())  # serialisable


def test_best_mode_trace_names_the_winning_candidate(ci, images):
    r = ci.interrogate(images[0], "best", caption="a dog", settings=SearchSettings(trace=True))
    assert r.trace.picked in {"caption", "classic", "fast", "chain"}
    if r.trace.picked == "chain":
        assert max(s.similarity for s in r.trace.steps) == pytest.approx(r.similarity, abs=1e-5)


# -- modes are modules with a registry --------------------------------------------------------------------


@dataclass
class _CaptionOnly:
    """A mode from outside the package: the caption alone, scored."""

    name: str = "caption-only"
    uses_caption: bool = True

    def needs_caption(self, has_captioner: bool) -> bool:
        return True

    def plan(self, ctx, batch):
        return [Task([], lambda f=f: Outcome([Scored(f.caption, [], "caption")], score=True)) for f in batch]


def test_a_registered_mode_is_dispatched(ci, images):
    register_mode(_CaptionOnly())
    try:
        assert "caption-only" in mode_names()
        r = ci.interrogate(images[0], "caption-only", caption="a lonely dog")
        assert r.prompt == "a lonely dog" and r.mode == "caption-only"
        expected = float(ci.similarity(ci.encode([images[0]], generate_captions=False)[0], ["a lonely dog"])[0])
        assert r.similarity == pytest.approx(expected, abs=1e-6)
    finally:
        from image2prompt import modes

        modes._MODES.pop("caption-only", None)


def test_missing_caption_is_a_clear_error(ci, images):
    feats = ci.encode(images[:1], generate_captions=False)
    with pytest.raises(CaptionRequired, match="image 0: fast mode needs a caption, and none was given or generated") \
            as info:
        ci.search(feats, SearchSettings(mode="fast"))
    assert isinstance(info.value, ValueError) and "negative" in str(info.value)  # names the modes that need none
    assert next(ci.search(feats, SearchSettings(mode="negative"))).prompt  # negative needs none
