from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from image2prompt.cache import EmbeddingCache, default_cache_dir, hash_codes, sanitize_model_name
from image2prompt.vocab import PhraseTable, labels_sha256


@pytest.fixture
def table() -> PhraseTable:
    return PhraseTable.from_lines("flavors", ["a", "b", "c"])


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
    table = PhraseTable.from_lines("flavors", raw)
    got = EmbeddingCache(tmp_path, download=False).load("m", table)
    np.testing.assert_array_equal(got, e[[0, 1, 4]])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong-hash", "wrong-rows", "wrong-dim", "nan"])
def test_damaged_or_mismatched_files_are_rejected(tmp_path: Path, table: PhraseTable, damage: str):
    from safetensors.numpy import save_file

    cache = EmbeddingCache(tmp_path, download=False)
    path = cache.save("m", table, embeds())
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    elif damage == "wrong-hash":
        save_file({"embeds": embeds(), "hash": hash_codes(labels_sha256(["x"]))}, str(path))
    elif damage == "wrong-rows":
        save_file({"embeds": embeds(4), "hash": hash_codes(table.sha256)}, str(path))
    elif damage == "nan":
        bad = embeds()
        bad[1, 1] = np.nan
        save_file({"embeds": bad, "hash": hash_codes(table.sha256)}, str(path))
    dim = 8 if damage == "wrong-dim" else None
    assert cache.load("m", table, dim=dim) is None


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

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
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
