from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from image2prompt.errors import VocabularyError
from image2prompt.vocab import (
    TRENDING_SITES,
    PhraseTable,
    labels_sha256,
    load_classic_pack,
    load_folder_pack,
    load_style_pack,
    load_vocabulary,
    reference_data_dir,
)


def test_classic_pack_comes_from_the_installed_reference_without_importing_it():
    code = (
        "import sys; from image2prompt.vocab import load_classic_pack; p = load_classic_pack(); "
        "assert 'clip_interrogator' not in sys.modules; assert 'torch' not in sys.modules; "
        "print(' '.join(f'{c}={len(p[c])}' for c in p))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    counts = dict(kv.split("=") for kv in out.split())
    assert list(counts) == ["artists", "flavors", "mediums", "movements", "trendings", "negative"]
    assert int(counts["trendings"]) == 4 * 18
    assert int(counts["flavors"]) > 100_000


def test_classic_expansions_and_cleaning():
    pack = load_classic_pack()
    raw_artists = [line.strip() for line in (reference_data_dir() / "artists.txt").read_text().splitlines()]
    artists = pack["artists"].labels
    assert artists[0] == f"by {raw_artists[0]}"
    assert artists[len(raw_artists)] == f"inspired by {raw_artists[0]}"
    trend = pack["trendings"].labels
    assert trend[:18] == TRENDING_SITES
    assert trend[18] == "trending on Artstation" and trend[36] == "featured on Artstation"
    assert trend[54] == "Artstation contest winner"
    flavors = pack["flavors"].labels
    assert "" not in flavors and len(set(flavors)) == len(flavors)
    # flavors.txt has a blank line and duplicates: the reference's raw layout is kept for cache reuse
    raw = [line.strip() for line in open(reference_data_dir() / "flavors.txt", encoding="utf-8", errors="replace")]
    src = pack["flavors"].source
    assert src is not None and src.size == len(raw) and src.sha256 == labels_sha256(raw)
    assert [raw[r] for r in src.rows] == list(flavors)


def test_from_lines_drops_blanks_and_duplicates_keeping_order():
    t = PhraseTable.from_lines("x", ["  b ", "a", "", "b", "c", "a"])
    assert t.labels == ("b", "a", "c")
    assert t.source is not None and t.source.rows == (0, 1, 4)
    clean = PhraseTable.from_lines("y", ["a", "b"])
    assert clean.source is None
    assert clean.sha256 == labels_sha256(["a", "b"])


def test_folder_pack_layout(small_vocab_dir: Path):
    pack = load_folder_pack(small_vocab_dir)
    assert pack.categories() == ["artists", "flavors", "mediums", "movements", "trendings", "negative"]
    assert pack["artists"].labels[0] == "by Claude Monet"
    assert pack.merged_categories() == ["artists", "flavors", "mediums", "movements", "trendings"]


def test_single_lists_add_categories(tmp_path: Path, small_vocab_dir: Path):
    extra = tmp_path / "lighting.txt"
    extra.write_text("rim light\nsoft light\n\nrim light\n")
    pack = load_vocabulary([small_vocab_dir, extra])
    assert pack["lighting"].labels == ("rim light", "soft light")
    assert pack.merged_categories()[-1] == "lighting"


@pytest.mark.parametrize("bad,message", [
    ("missing-folder", "not found"),
    ("list.csv", "must be a .txt file"),
])
def test_bad_vocab_paths_raise_clear_errors(tmp_path: Path, bad: str, message: str):
    p = tmp_path / bad
    if bad.endswith(".csv"):
        p.write_text("x\n")
    with pytest.raises(VocabularyError, match=message):
        load_vocabulary([p])


def test_empty_folder_and_unknown_category(tmp_path: Path, small_vocab_dir: Path):
    with pytest.raises(VocabularyError, match="no <category>.txt"):
        load_folder_pack(tmp_path)
    with pytest.raises(VocabularyError, match="has no 'lighting' list"):
        load_folder_pack(small_vocab_dir)["lighting"]


def test_style_pack_ships_with_the_package():
    pack = load_style_pack()
    assert {"lighting", "color", "composition", "camera", "rendering", "mood", "era"} <= set(pack.categories())
    assert all(len(pack[c]) >= 50 for c in pack.categories())


def test_only_the_references_own_lists_are_canonical(tmp_path: Path, small_vocab_dir: Path):
    """Canonical tables keep the reference's cache-file names; every other table is named by its hash."""
    classic = load_classic_pack()
    assert all(classic[c].canonical for c in classic)
    folder = load_folder_pack(small_vocab_dir)
    assert folder["trendings"].canonical and folder["trendings"] == classic["trendings"]  # the generated list
    assert not any(folder[c].canonical for c in folder if c != "trendings")
    own = tmp_path / "own"
    own.mkdir()
    (own / "flavors.txt").write_text("a\nb\n")
    (own / "trendings.txt").write_text("trending on my site\n")
    assert not any(t.canonical for t in load_folder_pack(own).tables.values())
    added = tmp_path / "flavors.txt"
    added.write_text("my flavor\n")
    mixed = load_vocabulary([added])  # a list that replaces one of the classic pack's
    assert not mixed["flavors"].canonical and mixed["mediums"].canonical
    assert not load_style_pack()["lighting"].canonical
    assert not PhraseTable.from_lines("flavors", ["a"]).canonical
