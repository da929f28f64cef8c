"""Fixtures of the server tests: one tiny interrogator and one running server per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from image2prompt import Config, Interrogator
from image2prompt.server import ServerConfig, create_app
from tests.support.server import running_app


@pytest.fixture(scope="session")
def serve_interrogator(tiny_open_clip: Path, tiny_blip: Path, small_vocab_dir: Path,
                       tmp_path_factory: pytest.TempPathFactory) -> Interrogator:
    return Interrogator.load(Config(
        clip_model=f"local-dir:{tiny_open_clip}", caption_model=f"local-dir:{tiny_blip}", device="cpu",
        cache_dir=str(tmp_path_factory.mktemp("serve-cache")), vocab=(str(small_vocab_dir),)))


@pytest.fixture(scope="session")
def server_url(serve_interrogator: Interrogator) -> Iterator[str]:
    """A server with the default limits (no API key, URLs off), shared by the tests that do not change them."""
    mp = pytest.MonkeyPatch()
    try:
        with running_app(create_app(serve_interrogator, ServerConfig()), mp) as base:
            yield base
    finally:
        mp.undo()
