"""Library errors in the server's answers: the pixel limit in the server's words, and a mode that
needs a caption (CaptionRequired, a SettingsError) as a 422 with its one-line message on every route."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from image2prompt import Config, Interrogator
from image2prompt.errors import RAISE_MAX_PIXELS, CaptionRequired
from image2prompt.server import ServerConfig, create_app
from tests.conftest import make_images
from tests.server.test_app import assert_json_error, png, post_image
from tests.support.server import running_app


@pytest.fixture(scope="module")
def picture() -> bytes:
    return png(make_images(1)[0])


def test_the_pixel_limit_names_the_servers_own_setting(serve_interrogator, monkeypatch):
    wide = png(Image.new("RGB", (400, 240), (1, 2, 3)))
    with running_app(create_app(serve_interrogator, ServerConfig(max_pixels=300 * 300)), monkeypatch) as base:
        answers = [post_image(base, wide),
                   httpx.post(base + "/interrogator/prompt", json={"image": base64.b64encode(wide).decode()})]
        for r in answers:
            assert_json_error(r, 413, "image too large (400×240 pixels, limit 90000 pixels;")
            assert "serve --max-pixels" in r.json()["error"]
            assert RAISE_MAX_PIXELS not in r.json()["error"]  # the library's neutral words, replaced
        batch = httpx.post(base + "/v1/batch", files=[("files", ("wide.png", wide, "image/png"))],
                           data={"mode": "fast"}, timeout=120)
        record = batch.json()["records"][0]
        assert batch.status_code == 200 and not record["ok"]
        assert record["error"].startswith("wide.png: image too large") and "serve --max-pixels" in record["error"]


@pytest.fixture(scope="module")
def captionless(tiny_open_clip: Path, small_vocab_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Interrogator:
    """``serve --caption-model none``: a mode that needs a caption runs only with a given one."""
    return Interrogator.load(Config(clip_model=f"local-dir:{tiny_open_clip}", caption_model=None, device="cpu",
                                    cache_dir=str(tmp_path_factory.mktemp("captionless-cache")),
                                    vocab=(str(small_vocab_dir),)))


@pytest.fixture(scope="module")
def captionless_app(captionless: Interrogator) -> Iterator[tuple[Any, str]]:
    mp = pytest.MonkeyPatch()
    try:
        app = create_app(captionless, ServerConfig())
        with running_app(app, mp) as base:
            yield app, base
    finally:
        mp.undo()


def ask_every_route(base: str, picture: bytes) -> list[httpx.Response]:
    """The same search asked of the native, A1111 extension and A1111 routes (all with no caption)."""
    b64 = base64.b64encode(picture).decode()
    return [post_image(base, picture, mode="best"),
            httpx.post(base + "/v1/interrogate", json={"image": b64, "mode": "classic"}, timeout=120),
            httpx.post(base + "/interrogator/prompt", json={"image": b64, "mode": "best"}, timeout=120),
            httpx.post(base + "/sdapi/v1/interrogate", json={"image": b64, "model": "clip"}, timeout=120)]


def batch_record(base: str, picture: bytes) -> dict[str, Any]:
    r = httpx.post(base + "/v1/batch", files=[("files", ("a.png", picture, "image/png"))], data={"mode": "best"},
                   timeout=120)
    assert r.status_code == 200, r.text
    record: dict[str, Any] = r.json()["records"][0]
    assert not record["ok"]
    return record


def test_a_mode_that_needs_a_caption_with_no_captioner_is_a_422(captionless_app, picture):
    _, base = captionless_app
    for r in ask_every_route(base, picture):
        assert_json_error(r, 422, "needs a caption")
    assert batch_record(base, picture)["error"].startswith("a.png: ")
    assert "needs a caption" in batch_record(base, picture)["error"]
    assert_json_error(httpx.post(base + "/interrogator/prompt", json={"image": base64.b64encode(picture).decode(),
                                                                     "mode": "caption"}), 422, "no caption model")
    given = post_image(base, picture, mode="best", caption="a red fox")  # a given caption is enough
    assert given.status_code == 200 and given.json()["caption"] == "a red fox"


@pytest.mark.parametrize("when", ["on submit", "from the worker"])
def test_caption_required_is_a_422_with_its_one_line_message(captionless_app, picture, monkeypatch, when):
    app, base = captionless_app
    err = CaptionRequired("best", source="a.png", caption_free=("negative",))

    def submit(*args: Any, **kwargs: Any) -> Future[Any]:
        if when == "on submit":
            raise err
        future: Future[Any] = Future()
        future.set_exception(err)
        return future

    monkeypatch.setattr(app.state.i2p.batcher, "submit", submit)
    for r in ask_every_route(base, picture):
        assert_json_error(r, 422, str(err))
    assert batch_record(base, picture)["error"] == str(err)  # it names its image already: not twice
