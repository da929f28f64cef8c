"""--max-tokens is a hard budget in every mode: no result is ever longer, and a caption over it is cut."""

from __future__ import annotations

from pathlib import Path

import pytest

from image2prompt import Config, Interrogator, SearchSettings
from image2prompt.cache import EmbeddingCache
from image2prompt.models.clip import load_clip
from image2prompt.settings import BUILTIN_MODES
from image2prompt.vocab import load_folder_pack

LONG_CAPTION = ("a painting of a woman in a long red dress standing on a stone bridge over a river at dusk, "
                "with lanterns hanging from the railings and a small dog sitting at her feet, boats on the water, "
                "mountains far away in the mist and birds flying over the rooftops of an old town, "
                "and a full moon rising behind the clouds above the cathedral towers, while children run "
                "along the narrow streets carrying paper kites and baskets of bread")


@pytest.fixture(scope="module", params=["open_clip", "transformers"])
def ci(request, tiny_open_clip: Path, tiny_hf_clip: Path, small_vocab_dir: Path, tmp_path_factory) -> Interrogator:
    path = f"local-dir:{tiny_open_clip}" if request.param == "open_clip" else str(tiny_hf_clip)
    return Interrogator(load_clip(path, device="cpu"), None, load_folder_pack(small_vocab_dir),
                        EmbeddingCache(tmp_path_factory.mktemp("cache"), download=False), Config(caption_model=None))


@pytest.mark.parametrize("budget", [3, 10, 20, 77])
@pytest.mark.parametrize("mode", BUILTIN_MODES)
def test_no_mode_returns_more_tokens_than_the_budget(ci, images, mode, budget):
    assert ci.count_tokens(LONG_CAPTION) > 77
    settings = SearchSettings(mode=mode, max_tokens=budget, negative=mode == "fast", max_flavors=12, min_flavors=4)
    r = ci.interrogate(images[1], caption=LONG_CAPTION, settings=settings)
    assert r.token_count == ci.count_tokens(r.prompt) <= budget - 2, r.prompt
    if r.negative is not None:
        assert ci.count_tokens(r.negative.prompt) <= budget - 2
    if mode in ("negative", "style"):
        assert r.caption is None or r.caption_truncated
        return
    assert r.caption_truncated and r.caption is not None
    assert LONG_CAPTION.startswith(r.caption) and LONG_CAPTION[len(r.caption)] in " ,"  # cut at a word or clause
    assert ci.count_tokens(r.caption) <= budget - 2
    if r.caption:
        assert r.prompt.startswith(r.caption)


def test_a_caption_that_fits_is_not_marked(ci, images):
    r = ci.interrogate(images[0], "fast", caption="a red square", settings=SearchSettings(max_tokens=20))
    assert not r.caption_truncated and r.caption == "a red square"
    assert r.token_count <= 18


def test_a_long_caption_is_cut_where_a_clause_ends() -> None:
    from image2prompt.prompt import cut_caption_to_fit

    def words(text: str) -> int:
        return len(text.split())  # a stand-in tokenizer: one token a word (plus start and end)

    text = "A fox sits in deep snow under pine trees. Its fur is red and thick, with white paws, and it looks up"
    assert cut_caption_to_fit(text, words, 14) == "A fox sits in deep snow under pine trees"  # the sentence, whole
    assert cut_caption_to_fit(text, words, 19) == "A fox sits in deep snow under pine trees. Its fur is red and thick"
    assert cut_caption_to_fit("one two three four five six seven eight nine ten, eleven", words, 9) == \
        "one two three four five six seven"  # no clause end fits: the word cut
    assert cut_caption_to_fit("a, b c d e f g h i j k l", words, 12) == "a, b c d e f g h i j"  # a clause too short
    assert cut_caption_to_fit("a short caption", words, 77) == "a short caption"
