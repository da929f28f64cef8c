from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from image2prompt.cache import EmbeddingCache, default_cache_dir, hash_codes, sanitize_model_name
from image2prompt.vocab import PhraseTable, labels_sha256


@pytest.fixture
def table() -> PhraseTable:
    """A table of the reference's own (canonical), so its file keeps the reference's name."""
    return PhraseTable.from_lines("flavors", ["a", "b", "c"], canonical=True)


def embeds(n=3, d=4, seed=0) -> np.ndarray:
    return np.random.RandomState(seed).randn(n, d).astype(np.float16)


def test_file_name_and_format_match_the_reference(tmp_path: Path, table: PhraseTable):
    from safetensors.numpy import load_file

    cache = EmbeddingCache(tmp_path, download=False)
    path = cache.save("ViT-L-14/openai", table, embeds())
    assert path.name == "ViT-L-14_openai_flavors.safetensors"
    data = load_file(str(path))
    assert data["embeds"].dtype == np.float16 and data["embeds"].shape == (3, 4)
    assert data["hash"].dtype == np.int8
    assert "".join(chr(c) for c in data["hash"]) == labels_sha256(["a", "b", "c"])
    assert sanitize_model_name("hf-hub:org/x@y") == "hf-hub_org_x_y"


def test_round_trip_and_no_temp_files_left(tmp_path: Path, table: PhraseTable):
    cache = EmbeddingCache(tmp_path, download=False)
    e = embeds()
    cache.save("m", table, e)
    np.testing.assert_array_equal(cache.load("m", table), e)
    assert [p.name for p in tmp_path.iterdir()] == ["m_flavors.safetensors"]


def test_reads_a_file_the_reference_wrote(tmp_path: Path):
    """The reference keeps blank lines and duplicates; its files are keyed by that raw list."""
    from safetensors.numpy import save_file

    raw = ["a", "b", "", "a", "c"]
    e = embeds(5)
    save_file({"embeds": e, "hash": np.array([ord(c) for c in labels_sha256(raw)], dtype=np.int8)},
              str(tmp_path / "m_flavors.safetensors"))
    table = PhraseTable.from_lines("flavors", raw, canonical=True)
    got = EmbeddingCache(tmp_path, download=False).load("m", table)
    np.testing.assert_array_equal(got, e[[0, 1, 4]])


def test_offline_download_is_skipped(tmp_path: Path, table: PhraseTable, monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub

    def boom(*a, **k):  # pragma: no cover - must not be called
        raise AssertionError("downloaded while HF_HUB_OFFLINE=1")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert EmbeddingCache(tmp_path).load("ViT-L-14/openai", table) is None


def test_failed_download_falls_back_cleanly(tmp_path: Path, table: PhraseTable, monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub

    calls = []

    def fail(*a, **k):
        calls.append(a)
        raise OSError("network unreachable")

    import socket

    from huggingface_hub import constants

    from image2prompt import hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_probes", {})
    with socket.socket() as listener:  # the Hub's host answers; the download itself fails
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
        assert EmbeddingCache(tmp_path).load("ViT-L-14/openai", table) is None
    assert calls and calls[0][1] == "ViT-L-14_openai_flavors.safetensors"


def test_default_location_is_never_the_working_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("IMAGE2PROMPT_CACHE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    d = default_cache_dir()
    assert d.is_absolute() and tmp_path not in d.parents and d != tmp_path
    monkeypatch.setenv("IMAGE2PROMPT_CACHE_DIR", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"


def test_clear_and_entries(tmp_path: Path, table: PhraseTable):
    cache = EmbeddingCache(tmp_path, download=False)
    cache.save("m", table, embeds())
    assert [e.path.name for e in cache.entries()] == ["m_flavors.safetensors"]
    assert cache.clear() == 1
    assert list(cache.entries()) == []


def test_other_tables_are_named_by_their_label_hash_and_live_side_by_side(tmp_path: Path):
    cache = EmbeddingCache(tmp_path, download=False)
    a = PhraseTable.from_lines("flavors", ["a", "b", "c"])
    b = PhraseTable.from_lines("flavors", ["x", "y"])
    assert not a.canonical and a == PhraseTable.from_lines("flavors", ["a", "b", "c"], canonical=True)
    pa, pb = cache.save("ViT-L-14/openai", a, embeds()), cache.save("ViT-L-14/openai", b, embeds(2, seed=1))
    assert pa.name == f"ViT-L-14_openai_flavors_{a.sha256[:16]}.safetensors"
    assert pb.name == f"ViT-L-14_openai_flavors_{b.sha256[:16]}.safetensors"
    np.testing.assert_array_equal(cache.load("ViT-L-14/openai", a), embeds())
    np.testing.assert_array_equal(cache.load("ViT-L-14/openai", b), embeds(2, seed=1))
    assert cache.path_for("m", a) != cache.path_for("m", PhraseTable.from_lines("flavors", ["a", "b", "c"],
                                                                                canonical=True))


def test_only_the_references_own_tables_are_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append(a[1]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert EmbeddingCache(tmp_path).load("m", PhraseTable.from_lines("flavors", ["mine"])) is None
    assert calls == []


@pytest.mark.parametrize("damage, words", [
    ("truncate", "is corrupt (not a complete safetensors file"),
    ("garbage", "is corrupt (not a complete safetensors file"),
    ("no-hash", "is corrupt (no hash tensor)"),
    ("wrong-rows", "is corrupt (4 rows for 3 labels)"),
    ("nan", "is corrupt (its embeddings are not all finite numbers)"),
    ("wrong-hash", "was built for another vocabulary list"),
    ("wrong-dim", "was written by another model (embeddings of size 4, this model's are 8)"),
])
def test_a_rejected_file_is_one_warning_that_says_why(tmp_path: Path, table: PhraseTable, damage: str, words: str,
                                                       caplog: pytest.LogCaptureFixture):
    from safetensors.numpy import save_file

    cache = EmbeddingCache(tmp_path, download=False)
    path = cache.save("m", table, embeds())
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    elif damage == "no-hash":
        save_file({"embeds": embeds()}, str(path))
    elif damage == "wrong-rows":
        save_file({"embeds": embeds(4), "hash": hash_codes(table.sha256)}, str(path))
    elif damage == "nan":
        bad = embeds()
        bad[1, 1] = np.nan
        save_file({"embeds": bad, "hash": hash_codes(table.sha256)}, str(path))
    elif damage == "wrong-hash":
        save_file({"embeds": embeds(), "hash": hash_codes(labels_sha256(["x", "y", "z"]))}, str(path))
    with caplog.at_level("DEBUG", logger="image2prompt"):
        assert cache.load_table("m", table, dim=8 if damage == "wrong-dim" else 4) is None
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    message = caplog.records[0].getMessage()
    assert message.startswith(f"embedding cache file {path} {words}") and message.endswith("; recomputing it")


def test_a_file_where_the_folder_should_be_is_named_in_the_error(tmp_path: Path, table: PhraseTable):
    from image2prompt.errors import CacheError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    for directory, where in ((blocker, "this is a file"), (blocker / "sub", f"{blocker} is a file")):
        cache = EmbeddingCache(directory, download=False)
        assert cache.file_in_the_way() == blocker
        assert cache.load("m", table) is None
        with pytest.raises(CacheError) as err:
            cache.save("m", table, embeds())
        assert str(err.value) == (f"{directory}: the embedding cache must be a folder, but {where}; "
                                  "pass --cache-dir to use another folder")
    assert EmbeddingCache(tmp_path / "new" / "deeper").file_in_the_way() is None
    EmbeddingCache(tmp_path / "new").check()


def test_precomputed_files_are_asked_for_only_for_named_models_and_a_reachable_hub(
        table: PhraseTable, tmp_path, monkeypatch) -> None:
    """Local folders have no published tables, and an unreachable Hub is asked once (a TCP
    probe), not once per table with retries."""
    import socket

    import huggingface_hub
    from huggingface_hub import constants

    from image2prompt import hub

    asked: list[str] = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, **kw: asked.append(name))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_probes", {})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    cache = EmbeddingCache(tmp_path, download=True)
    assert cache.load("ViT-B-32/openai", table) is None
    assert cache.load("local_tiny_0123456789ab", table) is None
    assert asked == []  # unreachable: nothing tried
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
        monkeypatch.setattr(hub, "_probes", {})
        cache.load("local_tiny_0123456789ab", table)
        cache.load("hf-hub:org/repo", table)
        assert asked == []  # never for local folders or hub schemes
        cache.load("ViT-B-32/openai", table)
        assert asked == ["ViT-B-32_openai_flavors.safetensors"]


def test_our_gelu_files_are_stale_for_a_model_built_with_quick_gelu(
        tmp_path: Path, table: PhraseTable, caplog: pytest.LogCaptureFixture):
    """ViT-L-14/openai and the other QuickGELU-trained tags were built with GELU (by earlier
    versions, or open_clip 2.29+ without asking): our files say which activation made them."""
    from safetensors.numpy import load_file, save_file

    cache = EmbeddingCache(tmp_path, download=False)
    path = cache.save("ViT-L-14/openai", table, embeds(), token_ids=[[1], [2], [3]], quick_gelu=True)
    assert load_file(str(path))["i2p_quick_gelu"].tolist() == [1]
    assert cache.load_table("ViT-L-14/openai", table, quick_gelu=True) is not None

    cache.save("ViT-L-14/openai", table, embeds(), token_ids=[[1], [2], [3]])  # built with GELU
    assert "i2p_quick_gelu" not in load_file(str(path))
    assert cache.load_table("ViT-L-14/openai", table) is not None  # a GELU model: right
    with caplog.at_level("WARNING", logger="image2prompt"):
        assert cache.load_table("ViT-L-14/openai", table, quick_gelu=True) is None
        assert cache.load("ViT-L-14/openai", table, quick_gelu=True) is None
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    assert "was computed with GELU, but this model's weights were trained with QuickGELU" in (
        caplog.records[0].getMessage())

    # the reference's files (no token ids) cannot be told apart: its published ones were made right
    save_file({"embeds": embeds(), "hash": hash_codes(table.sha256)}, str(path))
    assert cache.load_table("ViT-L-14/openai", table, quick_gelu=True) is not None
