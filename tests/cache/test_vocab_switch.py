"""Switching vocabularies keeps each one's cached tables; a rejected file says why, once."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from image2prompt import Config, Interrogator
from image2prompt.cache import EmbeddingCache, hash_codes, sanitize_model_name
from image2prompt.models.clip import load_clip
from image2prompt.vocab import VocabularyPack, labels_sha256, load_classic_pack, load_folder_pack


@pytest.fixture(scope="module")
def encoder(tiny_open_clip: Path):
    """The tiny encoder, with every embed_labels call counted (labels per call)."""
    enc = load_clip(f"local-dir:{tiny_open_clip}", device="cpu")
    enc.calls = []
    original = enc.embed_labels

    def counting(texts, **kw):
        enc.calls.append(len(texts))
        return original(texts, **kw)

    enc.embed_labels = counting  # type: ignore[method-assign]
    return enc


@pytest.fixture
def other_vocab_dir(small_vocab_dir: Path, tmp_path: Path) -> Path:
    """Vocabulary B: the same categories as A, other lists, and no trendings.txt either."""
    d = tmp_path / "vocab-b"
    d.mkdir()
    for p in small_vocab_dir.glob("*.txt"):
        (d / p.name).write_text(p.read_text(encoding="utf-8") + f"another {p.stem}\n", encoding="utf-8")
    return d


def prepare(encoder, pack: VocabularyPack, cache_dir: Path) -> list[int]:
    encoder.calls.clear()
    Interrogator(encoder, None, pack, EmbeddingCache(cache_dir, download=False), Config(caption_model=None)).prepare()
    return list(encoder.calls)


def cache_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "image2prompt.cache.embeddings" and r.levelno >= logging.WARNING]


def test_switching_vocabularies_and_back_embeds_nothing(encoder, small_vocab_dir: Path, other_vocab_dir: Path,
                                                        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    a, b = load_folder_pack(small_vocab_dir), load_folder_pack(other_vocab_dir)
    cache_dir = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="image2prompt"):
        assert sum(prepare(encoder, a, cache_dir)) == sum(len(a[c]) for c in a)
        # B's own lists are embedded; the standard trendings table is the same list, so it is shared
        assert sum(prepare(encoder, b, cache_dir)) == sum(len(b[c]) for c in b if c != "trendings")
        assert prepare(encoder, a, cache_dir) == []
        assert prepare(encoder, b, cache_dir) == []
    assert cache_warnings(caplog) == []
    names = sorted(p.name for p in cache_dir.iterdir())
    assert len(names) == 2 * len(a.categories()) - 1
    key = sanitize_model_name(encoder.cache_key)
    assert f"{key}_trendings.safetensors" in names  # a canonical table: the reference's name
    assert f"{key}_flavors_{a['flavors'].sha256[:16]}.safetensors" in names
    assert f"{key}_flavors_{b['flavors'].sha256[:16]}.safetensors" in names


def _classic_subset() -> VocabularyPack:
    classic = load_classic_pack()  # the reference's lists: canonical tables (small ones, for speed)
    return VocabularyPack("classic", {c: classic[c] for c in ("mediums", "movements", "negative")})


def test_a_file_named_and_hashed_as_the_reference_does_is_used(encoder, tmp_path: Path):
    from safetensors.numpy import save_file

    pack = _classic_subset()
    assert all(pack[c].canonical for c in pack)
    mediums = pack["mediums"]
    raw = mediums.source.size if mediums.source is not None else len(mediums)
    written = np.random.RandomState(0).randn(raw, encoder.embed_dim).astype(np.float16)
    ref_hash = mediums.source.sha256 if mediums.source is not None else labels_sha256(list(mediums.labels))
    ref_name = encoder.cache_key.replace("/", "_").replace("@", "_")  # the reference's file-name rule
    save_file({"embeds": written, "hash": hash_codes(ref_hash)}, str(tmp_path / f"{ref_name}_mediums.safetensors"))

    assert prepare(encoder, pack, tmp_path) == [len(pack["movements"]), len(pack["negative"])]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"{ref_name}_{c}.safetensors" for c in pack)
    assert prepare(encoder, pack, tmp_path) == []


def test_each_reason_is_logged_once_with_what_happened(encoder, small_vocab_dir: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture):
    from safetensors.numpy import save_file

    pack = _classic_subset()
    cache = EmbeddingCache(tmp_path, download=False)
    key = encoder.cache_key
    mediums, movements, negative = pack["mediums"], pack["movements"], pack["negative"]
    # mediums: a reference-named file that was built for another list of mediums
    other = np.zeros((3, encoder.embed_dim), dtype=np.float16)
    save_file({"embeds": other, "hash": hash_codes(labels_sha256(["x", "y", "z"]))},
              str(cache.path_for(key, mediums)))
    # movements: a damaged file
    good = np.zeros((len(movements), encoder.embed_dim), dtype=np.float16)
    path = cache.save(key, movements, good)
    path.write_bytes(path.read_bytes()[:100])
    # negative: the right list, embedded by a model with another embedding size
    cache.save(key, negative, np.zeros((len(negative), encoder.embed_dim + 8), dtype=np.float16))

    with caplog.at_level(logging.INFO, logger="image2prompt"):
        assert sorted(prepare(encoder, pack, tmp_path)) == sorted(len(t.labels) for t in pack.tables.values())
    warned = cache_warnings(caplog)
    assert len(warned) == 3, warned
    by_table = {c: [w for w in warned if f"_{c}.safetensors" in w] for c in pack}
    assert all(len(v) == 1 for v in by_table.values()), by_table
    assert "was built for another vocabulary list" in by_table["mediums"][0]
    assert "is corrupt" in by_table["movements"][0] and "safetensors file" in by_table["movements"][0]
    assert ("was written by another model "
            f"(embeddings of size {encoder.embed_dim + 8}, this model's are {encoder.embed_dim})"
            ) in by_table["negative"][0]
    for text in warned:
        assert text.endswith("; recomputing it") and "stale" not in text

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="image2prompt"):
        assert prepare(encoder, pack, tmp_path) == []  # rewritten: read back without a word
    assert cache_warnings(caplog) == []
