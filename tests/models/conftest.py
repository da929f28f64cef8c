"""Fixtures for the model tests: tiny random-weight vision-language models, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import vlms


@pytest.fixture(scope="session")
def tiny_llava(models_dir: Path) -> Path:
    """A tiny Llava folder (JoyCaption's architecture)."""
    return vlms.make_llava_dir(models_dir / "tiny-llava")


@pytest.fixture(scope="session")
def tiny_qwen2_vl(models_dir: Path) -> Path:
    return vlms.make_qwen2_vl_dir(models_dir / "tiny-qwen2-vl")


@pytest.fixture(scope="session")
def tiny_gemma3(models_dir: Path) -> Path:
    return vlms.make_gemma3_dir(models_dir / "tiny-gemma3")


@pytest.fixture(scope="session")
def tiny_florence2(models_dir: Path) -> Path:
    return vlms.make_florence2_dir(models_dir / "tiny-florence2")
