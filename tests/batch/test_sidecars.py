"""Caption files beside images: names, the existing-file policies, dedupe, trigger words, atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from image2prompt.batch.sidecars import SidecarOptions, caption_text, sidecar_path, write_sidecar
from image2prompt.errors import SettingsError


def test_sidecar_path() -> None:
    assert sidecar_path("d/photo.png") == Path("d/photo.txt")
    assert sidecar_path("d/photo.v2.JPG", ".caption") == Path("d/photo.v2.caption")
    assert SidecarOptions(ext="caption").ext == ".caption"
    with pytest.raises(SettingsError):
        SidecarOptions(ext="../x")
    with pytest.raises(SettingsError):
        SidecarOptions(on_existing="merge")


def test_prefix_and_suffix_are_joined_with_commas() -> None:
    opts = SidecarOptions(prefix="sks dog", suffix="best quality")
    assert caption_text("a dog\non grass", opts) == "sks dog, a dog on grass, best quality"


def test_new_file_then_skip_then_overwrite(tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    assert write_sidecar(img, "a cat", SidecarOptions()) == "written"
    assert (tmp_path / "a.txt").read_bytes() == b"a cat\n"
    assert write_sidecar(img, "a dog", SidecarOptions()) == "skipped"
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "a cat\n"
    assert write_sidecar(img, "a dög", SidecarOptions(on_existing="overwrite")) == "overwritten"
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "a dög\n"
    assert write_sidecar(img, "a dög", SidecarOptions(on_existing="overwrite")) == "unchanged"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary file left


def test_append_prepend_and_dedupe(tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    cap = tmp_path / "a.caption"
    cap.write_text("1girl, Solo, smile\n", encoding="utf-8")
    opts = SidecarOptions(ext=".caption", on_existing="append")
    assert write_sidecar(img, "solo, oil painting", opts) == "appended"
    assert cap.read_text(encoding="utf-8") == "1girl, Solo, smile, solo, oil painting\n"
    assert write_sidecar(img, "solo, oil painting", opts) == "unchanged"  # a rerun appends nothing twice
    cap.write_text("1girl, Solo, smile\n", encoding="utf-8")
    dedupe = SidecarOptions(ext=".caption", on_existing="prepend", prefix="sks", dedupe=True)
    assert write_sidecar(img, "solo, oil painting, SMILE", dedupe) == "prepended"
    assert cap.read_text(encoding="utf-8") == "sks, oil painting, 1girl, Solo, smile\n"
    assert write_sidecar(img, "solo, oil painting, SMILE", dedupe) == "unchanged"
