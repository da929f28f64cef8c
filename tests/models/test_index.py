"""VocabularyIndex keeps each table's token ids and hands them to the encoder explicitly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from image2prompt.cache import EmbeddingCache
from image2prompt.index import VocabularyIndex
from image2prompt.models.clip import load_clip
from image2prompt.vocab import load_folder_pack


@pytest.fixture(scope="module")
def enc(tiny_open_clip: Path):
    return load_clip(f"local-dir:{tiny_open_clip}", device="cpu")


@pytest.fixture(scope="module")
def pack(small_vocab_dir: Path):
    return load_folder_pack(small_vocab_dir)


def test_token_ids_of_every_table_built_so_far(enc, pack, tmp_path: Path):
    index = VocabularyIndex(pack, enc, EmbeddingCache(tmp_path, download=False))
    ids = index.token_ids()
    assert len(ids) == 0
    index.embeds("mediums")
    assert set(ids) == set(pack["mediums"].labels)  # a live view: it grew with the table
    for label in pack["mediums"].labels:
        assert list(ids[label]) == enc.tokenizer.encode(label)
    index.prepare()
    assert set(ids) == {label for c in pack.categories() for label in pack[c].labels}
    with pytest.raises(TypeError):
        ids["x"] = [1]  # type: ignore[index]  # read-only


def test_token_ids_come_from_the_cache_file_without_embedding(enc, pack, tmp_path: Path, monkeypatch):
    cache = EmbeddingCache(tmp_path, download=False)
    first = VocabularyIndex(pack, enc, cache)
    first.embeds("movements")

    def no_embedding(*a, **kw):
        raise AssertionError("a cache hit must not embed")

    monkeypatch.setattr(enc, "embed_labels", no_embedding)
    second = VocabularyIndex(pack, enc, cache)
    second.embeds("movements")
    assert dict(second.token_ids()) == dict(first.token_ids())


def test_cache_files_without_ids_leave_labels_to_the_tokenizer(enc, pack, tmp_path: Path):
    cache = EmbeddingCache(tmp_path, download=False)
    table = pack["negative"]
    feats, _ = enc.embed_labels(list(table.labels))
    cache.save(enc.cache_key, table, feats.astype(np.float16))  # the reference's files carry no ids
    index = VocabularyIndex(pack, enc, cache)
    index.embeds("negative")
    assert len(index.token_ids()) == 0
    got = enc.encode_extensions("a photo", list(table.labels), phrase_ids=index.token_ids())
    ref = enc.encode_texts([f"a photo, {p}" for p in table.labels])
    assert np.abs(got - ref).max() <= 1e-5


def test_chain_steps_use_the_index_ids(enc, pack, tmp_path: Path, monkeypatch):
    index = VocabularyIndex(pack, enc, None)
    index.prepare()
    scorer = enc.prefix_scorer()
    asked: list[str] = []

    class Recording:
        def __getattr__(self, name):
            return getattr(enc.tokenizer, name)

        def encode(self, text):
            asked.append(text)
            return enc.tokenizer.encode(text)

    monkeypatch.setattr(scorer, "tok", Recording())
    scorer._suffix.clear()
    labels = list(pack["flavors"].labels)
    requests = [("a photo of a dog", labels), ("a painting", labels[:10])]
    outs = enc.encode_extensions_many(requests, phrase_ids=index.token_ids())
    for (prefix, phrases), got in zip(requests, outs):
        assert got.shape == (len(phrases), enc.embed_dim)
        assert np.abs(got - enc.encode_texts([f"{prefix}, {p}" for p in phrases])).max() <= 1e-5
    assert not set(asked) & set(labels)  # only prefixes (and probes) were tokenized


def test_a_quick_gelu_model_recomputes_our_older_files(enc, pack, tmp_path: Path, monkeypatch):
    """Our files written before ViT-L-14/openai and its kind were built with QuickGELU hold
    GELU embeddings: an encoder built with QuickGELU recomputes them; others keep them."""
    from safetensors.numpy import load_file

    cache = EmbeddingCache(tmp_path, download=False)
    VocabularyIndex(pack, enc, cache).embeds("movements")  # a GELU model: no mark
    path = cache.path_for(enc.cache_key, pack["movements"])
    assert "i2p_quick_gelu" not in load_file(str(path))

    embedded: list[int] = []
    real = enc.embed_labels

    def counting(labels, **kw):
        embedded.append(len(labels))
        return real(labels, **kw)

    monkeypatch.setattr(enc, "embed_labels", counting)
    VocabularyIndex(pack, enc, cache).embeds("movements")
    assert embedded == []  # a GELU model: the old file is right
    monkeypatch.setattr(enc, "quick_gelu_forced", True, raising=False)
    VocabularyIndex(pack, enc, cache).embeds("movements")
    assert embedded == [len(pack["movements"])]
    assert load_file(str(path))["i2p_quick_gelu"].tolist() == [1]  # rewritten, marked
    VocabularyIndex(pack, enc, cache).embeds("movements")
    assert embedded == [len(pack["movements"])]  # and read from now on
