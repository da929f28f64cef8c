"""Parity with the reference clip-interrogator on the same tiny model, vocabulary and captions."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from image2prompt import Config, Interrogator, SearchSettings
from image2prompt.cache import EmbeddingCache
from image2prompt.models.clip import load_clip
from image2prompt.vocab import load_folder_pack

CAPTIONS = [
    "a photo of a dog", "a painting of a woman sitting on a table", "a red square",
    "a blue circle on a green background", "an oil painting of a tree", "a man standing in the street",
    "a watercolor painting of the sky", "a photograph of water", "a cat", "a drawing of a house",
    "a picture of a red car, parked", "abstract shapes",
]

reference = pytest.importorskip("clip_interrogator")


@pytest.fixture(scope="module")
def pair(tiny_open_clip: Path, small_vocab_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_open_clip}")
    model.eval()
    cfg = reference.Config(
        clip_model_name="ViT-B-32/tiny", caption_model_name=None, device="cpu", quiet=True,
        download_cache=False, cache_path=str(tmp_path_factory.mktemp("ref-cache")),
        data_path=str(small_vocab_dir), chunk_size=2048,
    )
    cfg.clip_model, cfg.clip_preprocess = model, preprocess
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = reference.Interrogator(cfg)
    ours = Interrogator(
        load_clip(f"local-dir:{tiny_open_clip}", device="cpu"), None,
        load_folder_pack(small_vocab_dir), EmbeddingCache(tmp_path_factory.mktemp("our-cache"), download=False),
        Config(caption_model=None, device="cpu"),
    )
    return ref, ours


def _explained_by_glued_count(expected: str, got: str, count) -> bool:
    """The reference measures ``kept + part`` with no ", " between them, gluing two words.

    A mismatch is accepted only when it is exactly that: our prompt extends the
    reference's at a ", " boundary, the first extra part fits in 75 text tokens
    with its separator (so ours is within the window), and the reference's glued
    string counts as full.
    """
    if not got.startswith(expected + ", "):
        return False
    extra = got[len(expected) + 2:].split(", ")[0]
    return count(expected + ", " + extra) <= 75 and count(expected + extra) >= 75 and count(got) <= 75


@pytest.mark.parametrize("mode", ["classic", "fast", "best"])
def test_prompts_identical_to_reference(pair, images, mode):
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    count = lambda text: len(tok.encode(text))
    ref, ours = pair
    ref_fn = {"classic": ref.interrogate_classic, "fast": ref.interrogate_fast, "best": ref.interrogate}[mode]
    identical, unexplained = 0, []
    for i, img in enumerate(images):
        caption = CAPTIONS[i % len(CAPTIONS)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = ref_fn(img, caption=caption)
        got = ours.interrogate(img, mode, caption=caption, settings=SearchSettings.reference()).prompt
        if got == expected:
            identical += 1
        elif not _explained_by_glued_count(expected, got, count):
            unexplained.append(f"#{i}\n ref:  {expected}\n ours: {got}")
    assert not unexplained, "\n".join(unexplained)
    assert identical >= 20, f"only {identical} of {len(images)} prompts identical"
