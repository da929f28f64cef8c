"""The relevance floor: every mode keeps out phrases the image does not support on its own,
says which it kept out, and with the floor off behaves exactly as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from image2prompt import Config, Interrogator, SearchSettings
from image2prompt.cache import EmbeddingCache
from image2prompt.errors import SettingsError
from image2prompt.models.clip import load_clip
from image2prompt.modes.base import SearchContext
from image2prompt.prompt.assemble import classic_prompt
from image2prompt.settings import DEFAULT_FLOOR, FLOOR_RANGE, parse_floor
from image2prompt.vocab import load_folder_pack

S = SearchSettings
MODES = ("best", "turbo", "fast", "classic", "negative", "style")


@pytest.fixture(scope="module")
def ci(tiny_open_clip: Path, small_vocab_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Interrogator:
    enc = load_clip(f"local-dir:{tiny_open_clip}", device="cpu")
    return Interrogator(enc, None, load_folder_pack(small_vocab_dir),
                        EmbeddingCache(tmp_path_factory.mktemp("c"), download=False), Config(caption_model=None))


def _support(ci: Interrogator, feats, p) -> float:
    """Computed here from the tables' raw scores: margin over the category's median, over the
    standard deviation of every merged phrase's score for the image."""
    ctx = SearchContext(ci, S())
    every = np.concatenate([ctx.table_scores(c, feats).astype(np.float64) for c in ci.vocab.merged_categories()])
    median = float(np.median(ctx.table_scores(p.category, feats)))
    return (p.score - median) / float(every.std())


def _z(ci: Interrogator, feats, p) -> float:
    ctx = SearchContext(ci, S())
    median, std = ctx.category_stats(p.category, feats)
    return (p.score - median) / std


@pytest.mark.parametrize("mode", MODES)
def test_every_phrase_clears_the_floor_and_the_rejected_ones_do_not(ci, images, mode: str) -> None:
    feats = ci.encode(images[:3], ["a picture"] * 3, generate_captions=False)
    floor = 0.8
    for f, r in zip(feats, (r for _, r in sorted(ci.search_indexed(feats, S(mode=mode, floor=floor))))):
        below = mode == "negative"
        for p in r.phrases:
            if below and p.category == "negative":
                continue  # the negative list is generic by design and not floored
            sup = p.support
            assert sup is not None and (sup <= -floor if below else sup >= floor), (mode, p.text, sup)
            if mode != "style":  # style's support is on its own projected features; the rest on the image's
                assert sup == pytest.approx(_support(ci, f, p)) and p.z == pytest.approx(_z(ci, f, p))
        for p in r.rejected:
            assert p.text not in {q.text for q in r.phrases} and p.margin is not None and p.support is not None
            assert (p.support > -floor if below else p.support < floor), (mode, p.text, p.support)
        if r.phrases and not below:
            assert r.specificity == 1.0


@pytest.mark.parametrize("mode", ["fast", "classic", "best"])
def test_the_floor_keeps_out_what_the_unfloored_prompt_used(ci, images, mode: str) -> None:
    feats = ci.encode(images[:4], ["a picture"] * 4, generate_captions=False)
    off = dict(ci.search_indexed(feats, S(mode=mode, floor=None)))
    on = dict(ci.search_indexed(feats, S(mode=mode, floor=1.5)))
    kept_out = 0
    for i in off:
        weak = {p.text for p in off[i].phrases if _support(ci, feats[i], p) < 1.5}
        if mode in ("fast", "classic"):  # exact: the unfloored prompt's phrases under the floor
            assert {p.text for p in on[i].rejected} == weak
        kept_out += len(on[i].rejected)
        assert off[i].rejected == []
        if off[i].phrases:  # (best mode may keep the caption alone: then there is no share to give)
            # specificity with the floor off: the share of phrases that would clear the default floor
            share = sum(_support(ci, feats[i], p) >= DEFAULT_FLOOR for p in off[i].phrases) / len(off[i].phrases)
            assert off[i].specificity == pytest.approx(share)
        else:
            assert off[i].specificity is None
    assert kept_out > 0  # random weights: plenty of phrases sit near their category's median


def test_best_with_trace_lists_exactly_the_unfloored_chains_weak_picks(ci, images) -> None:
    feats = ci.encode(images[:2], ["a picture"] * 2, generate_captions=False)
    off = dict(ci.search_indexed(feats, S(mode="best", trace=True, floor=None)))
    on = dict(ci.search_indexed(feats, S(mode="best", trace=True, floor=1.5)))
    for i in off:
        chain = [s.phrase for s in off[i].trace.steps]
        weak = [t for t in chain
                if _support(ci, feats[i], next(p for p in ci_pool(ci, feats[i]) if p.text == t)) < 1.5]
        assert [p.text for p in on[i].rejected] == weak


def ci_pool(ci, feats):
    return SearchContext(ci, S()).top_merged(feats, 2048)


def test_the_floor_off_is_exactly_the_old_search(ci, images) -> None:
    feats = ci.encode(images[:2], ["a picture"] * 2, generate_captions=False)
    for mode in MODES:
        a = dict(ci.search_indexed(feats, S(mode=mode, floor=None)))
        b = dict(ci.search_indexed(feats, S(mode=mode, floor=FLOOR_RANGE[0])))  # a floor every phrase clears
        for i in a:
            assert a[i].prompt == b[i].prompt, mode
            assert a[i].rejected == [] and b[i].rejected == []


def test_an_impossible_floor_leaves_the_caption_alone(ci, images) -> None:
    feats = ci.encode(images[:1], ["a picture"], generate_captions=False)
    for mode in ("best", "turbo", "fast", "classic"):
        r = next(ci.search(feats, S(mode=mode, floor=FLOOR_RANGE[1])))
        assert r.prompt == "a picture" and r.phrases == [] and r.specificity is None, mode


def test_classic_layout_leaves_out_missing_parts() -> None:
    full = classic_prompt("a cat", "an oil painting", "by Monet", "trending on x", "cubism", ["moody"])
    assert full == "a cat, an oil painting by Monet, trending on x, cubism, moody"
    assert classic_prompt("a cat", None, "by Monet", None, "cubism", ["moody"]) == "a cat, by Monet, cubism, moody"
    assert classic_prompt("a cat", "an oil painting", None, None, None, []) == "a cat, an oil painting"
    assert classic_prompt("an oil painting of a cat", "an oil painting", None, "x", None, []) == \
        "an oil painting of a cat, x"


def test_floor_setting_is_validated() -> None:
    assert S(floor=1.5).floor == 1.5 and S(floor=None).floor is None
    for bad in ("high", True, float("nan"), float("inf")):
        with pytest.raises(SettingsError, match="floor"):
            S(floor=bad)


def test_floor_setting_is_bounded() -> None:
    """A floor past the range keeps out every phrase (an empty prompt in the modes with no caption)
    or none: a typo, said so by the library, the CLI (parse_floor) and the server alike."""
    low, high = FLOOR_RANGE
    assert S(floor=low).floor == low and S(floor=high).floor == high and S(floor=-0.5).floor == -0.5
    assert parse_floor(str(high)) == high and parse_floor(str(low)) == low
    for bad in (1e308, high + 0.01, low - 0.01, -1e9, 1e6):
        with pytest.raises(SettingsError, match=f"floor must be from {low:g} to {high:g}"):
            S(floor=bad)
        with pytest.raises(SettingsError, match=f"give a number from {low:g} to {high:g}"):
            parse_floor(repr(bad))


def test_the_bounds_reach_every_phrase_and_none(ci, images) -> None:
    """The range is wide enough: on the test vocabulary its top keeps out every phrase and its
    bottom none, so no floor outside it could do anything a floor inside it cannot."""
    feats = ci.encode(images[:2], ["a picture"] * 2, generate_captions=False)
    ctx = SearchContext(ci, S())
    for f in feats:
        support = np.concatenate([ctx.table_support(c, f) for c in ci.vocab.merged_categories()])
        assert FLOOR_RANGE[0] < support.min() and support.max() < FLOOR_RANGE[1]


def test_negative_mode_floors_flavors_only(ci, images) -> None:
    feats = ci.encode(images[:2], generate_captions=False)
    for _f, r in zip(feats, (r for _, r in sorted(ci.search_indexed(feats, S(mode="negative", floor=1.0))))):
        assert all(p.category == "flavors" for p in r.rejected)
        assert all(p.support <= -1.0 for p in r.phrases if p.category == "flavors")


def test_best_mode_lists_the_rejected_whichever_candidate_wins(ci, images) -> None:
    feats = ci.encode(images[:1], ["a picture"], generate_captions=False)
    r = next(ci.search(feats, S(mode="best", floor=FLOOR_RANGE[1])))  # nothing clears: the caption wins
    assert r.prompt == "a picture" and len(r.rejected) > 0


def test_cli_floor_option(tiny_open_clip: Path, small_vocab_dir: Path, image_folder: Path) -> None:
    import json

    from click.testing import CliRunner

    from image2prompt.cli.main import cli

    image = sorted(p for p in image_folder.iterdir() if p.suffix == ".png")[0]
    base = ["run", str(image), "--clip", f"local-dir:{tiny_open_clip}", "--caption-model", "none",
            "--caption", "a picture", "--vocab", str(small_vocab_dir), "--mode", "fast", "--format", "json"]
    runner = CliRunner()
    on = runner.invoke(cli, base + ["--floor", "1.5"])
    off = runner.invoke(cli, base + ["--floor", "off"])
    assert on.exit_code == 0 and off.exit_code == 0, (on.output, off.output)
    on_r, off_r = json.loads(on.stdout), json.loads(off.stdout)
    assert all(p["support"] >= 1.5 for p in on_r["phrases"]) and off_r["rejected"] == []
    assert {p["text"] for p in on_r["rejected"]} == {p["text"] for p in off_r["phrases"] if p["support"] < 1.5}
    bad = runner.invoke(cli, base + ["--floor", "high"])
    assert bad.exit_code == 2 and "--floor" in bad.output and "Traceback" not in bad.output


def test_analysis_marks_phrases_below_the_floor(ci, images) -> None:
    from image2prompt.render import format_analysis

    a = ci.analyze(images[0], top_n=8)
    assert a.floor == DEFAULT_FLOOR == S().floor
    text = format_analysis(a)
    below = [p for ps in a.categories.values() for p in ps if p.support < a.floor]
    assert text.count("(below floor)") == len(below) + (1 if below else 0)
