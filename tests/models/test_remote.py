"""The remote captioner (a VLM behind an OpenAI-compatible API), against real HTTP servers on
loopback: a scripted fake (tests/support/fake_openai.py) and ``transformers serve``."""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from image2prompt.errors import Image2PromptError, ModelLoadError
from image2prompt.models import parse_caption_name
from image2prompt.models.instructions import DEFAULT_INSTRUCTION
from image2prompt.models.remote import (
    CaptionerUnavailable,
    CaptionFailed,
    RemoteCaptioner,
    display_url,
    load_remote_captioner,
)
from image2prompt.work import Failure, WorkItem, encode_items, is_fatal
from tests.support.fake_openai import (
    Answer,
    FakeOpenAI,
    Request,
    Slow,
    Status,
    Truncated,
    caption_for,
    fake_openai,
    free_port,
    serve_transformers,
    transformers_cli,
)

KEY_VARS = ("IMAGE2PROMPT_CAPTION_API_KEY", "OPENAI_API_KEY", "IMAGE2PROMPT_CAPTION_ENDPOINT",
            "IMAGE2PROMPT_CAPTION_CONCURRENCY", "IMAGE2PROMPT_CAPTION_INSTRUCTION")


def pictures(n: int) -> list[Image.Image]:
    """``n`` images of different widths (40, 41, ...): the fake's answer names the width."""
    return [Image.new("RGB", (40 + i, 24), (30 * i % 256, 120, 200)) for i in range(n)]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    with fake_openai(monkeypatch=monkeypatch) as state:
        yield state


def make(server: FakeOpenAI, **kw: Any) -> RemoteCaptioner:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 10.0)
    return RemoteCaptioner(kw.pop("model", "fake-vlm"), endpoint=server.url, **kw)


# -- names -----------------------------------------------------------------------------------
def test_names_parse_without_loading() -> None:
    spec = parse_caption_name("openai:Qwen/Qwen2.5-VL-7B-Instruct")
    assert (spec.kind, spec.source, spec.name) == ("remote", "Qwen/Qwen2.5-VL-7B-Instruct",
                                                     "openai:Qwen/Qwen2.5-VL-7B-Instruct")
    assert parse_caption_name(" openai: ").source == ""
    assert display_url("https://user:secret@api.example.com:8443/v1?key=secret") == "https://api.example.com:8443/v1"


def test_the_scheme_is_reserved() -> None:
    from image2prompt.models import register_captioner

    with pytest.raises(ValueError, match="built in"):
        register_captioner("openai:")


# -- captions ----------------------------------------------------------------------------------
def test_batch_in_order_with_requests_in_parallel(server: FakeOpenAI) -> None:
    server.rule = lambda req: Answer(delay=0.5)
    with make(server, concurrency=3, max_tokens=40) as cap:
        got = cap.caption(pictures(5))
    assert got == [f"an image {40 + i} pixels wide" for i in range(5)]
    assert server.max_in_flight == 3  # up to 3 at once, never more
    chats = server.chats
    assert len(chats) == 5
    for req in chats:
        assert req.body["max_tokens"] == 40
        assert req.body["model"] == "fake-vlm"
        [url] = req.image_urls
        assert url.startswith(("data:image/jpeg;base64,", "data:image/png;base64,"))
        Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).verify()
        texts = [p["text"] for p in req.body["messages"][0]["content"] if p["type"] == "text"]
        assert texts == [DEFAULT_INSTRUCTION]
    assert sorted(r.image.width for r in chats if r.image is not None) == [40, 41, 42, 43, 44]


def test_model_taken_from_the_server_list_and_answer_cleaned(server: FakeOpenAI) -> None:
    server.then(Answer("  a red\n\n square   on  white \n"))
    with make(server, model=None, instruction="Caption it.", name="openai:") as cap:
        assert cap.model == "fake-vlm" and cap.name == "openai:"
        assert cap.input_side is None
        assert cap.caption(pictures(1)) == ["a red square on white"]
    assert server.chats[0].body["messages"][0]["content"][1]["text"] == "Caption it."


def test_max_side_reduces_what_is_sent(server: FakeOpenAI) -> None:
    with make(server, max_side=32) as cap:
        assert cap.input_side == 32
        assert cap.caption([Image.new("RGBA", (128, 64), (1, 2, 3, 128))]) == ["an image 32 pixels wide"]
    assert server.chats[0].image_urls[0].startswith("data:image/png;base64,")  # transparency: PNG


def test_429_waits_for_retry_after(server: FakeOpenAI) -> None:
    server.then(Status(429, retry_after=0.3), Answer("fine"))
    with make(server) as cap:
        assert cap.caption(pictures(1)) == ["fine"]
    first, second = server.chats
    assert second.started - first.ended >= 0.3


def test_503_with_retry_after_and_500s_are_retried(server: FakeOpenAI) -> None:
    server.then(Status(500), Status(500), Answer("third time"))
    with make(server, retries=2) as cap:
        assert cap.caption(pictures(1)) == ["third time"]
    assert [r.status for r in server.chats] == [500, 500, 200]
    server.then(Status(503, retry_after=0.2), Answer("after a pause"))
    with make(server) as cap:
        assert cap.caption(pictures(1)) == ["after a pause"]


def test_timeout_is_retried(server: FakeOpenAI) -> None:
    server.then(Slow(5.0), Answer("quick now"))
    with make(server, timeout=0.4) as cap:
        assert cap.caption(pictures(1)) == ["quick now"]


def bad_width(width: int, behaviour: Any) -> Any:
    """A rule: ``behaviour`` for the image ``width`` pixels wide, the default answer for the others."""
    return lambda req: behaviour if req.image is not None and req.image.width == width else None


def test_always_500_fails_that_image_only(server: FakeOpenAI) -> None:
    server.rule = bad_width(42, Status(500, message="kaboom"))
    with make(server, concurrency=2, retries=2) as cap:
        with pytest.raises(CaptionFailed) as info:
            cap.caption(pictures(5))
        err = info.value
        assert err.position == 2 and err.failed == (2,)
        assert "image 3 of 5" in str(err) and "kaboom" in str(err) and "\n" not in str(err)
        assert not is_fatal(err)
        asked = len(server.chats)
        # the work unit's policy: the batch again, one image at a time
        items = [WorkItem(i, f"img{i}.png", im, generate=True) for i, im in enumerate(pictures(5))]
        out = encode_items(CaptionOnly(cap), items)
    assert [o for o in out if not isinstance(o, Failure)] == [caption_for(im) for im in pictures(5) if im.width != 42]
    [failed] = [o for o in out if isinstance(o, Failure)]
    assert failed.text.startswith("img2.png: could not interrogate (") and not failed.fatal
    assert "kaboom" in failed.text
    # the images answered in the batch were not asked for again; the bad one was, 3 times per try
    assert len(server.chats) - asked == 3 + 3


class CaptionOnly:
    """The least an interrogator's ``encode`` does for the work unit: caption every image."""

    def __init__(self, captioner: RemoteCaptioner) -> None:
        self.captioner = captioner

    def encode(self, images: list[Any], captions: list[str | None], *, sources: Any,
               generate_captions: Any) -> list[str]:
        return self.captioner.caption(images)


def test_a_400_fails_the_image_at_once(server: FakeOpenAI) -> None:
    server.rule = bad_width(41, Status(400, message="image too small"))
    with make(server) as cap:
        with pytest.raises(CaptionFailed, match=r"image 2 of 3: HTTP 400.*image too small"):
            cap.caption(pictures(3))
    assert sum(1 for r in server.chats if r.status == 400) == 1


def test_truncated_and_empty_answers_fail_after_retries(server: FakeOpenAI) -> None:
    server.then(Truncated(), Answer("whole"))
    with make(server) as cap:
        assert cap.caption(pictures(1)) == ["whole"]
    server.rule = lambda req: Truncated()
    with make(server, retries=1) as cap, pytest.raises(CaptionFailed, match="malformed answer"):
        cap.caption(pictures(1))
    server.rule = lambda req: Answer("   \n ")
    with make(server, retries=1) as cap, pytest.raises(CaptionFailed, match="empty caption"):
        cap.caption(pictures(1))


# -- a server that cannot be used --------------------------------------------------------------
def test_connection_refused_stops_at_once() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    with pytest.raises(CaptionerUnavailable) as info:
        RemoteCaptioner("m", endpoint=url, retries=5, backoff=10.0)
    assert time.monotonic() - started < 5  # no backoff: 5 tries would have taken minutes
    text = str(info.value)
    assert text == f"{url}: connection refused: is the caption server running?"
    assert isinstance(info.value, ModelLoadError) and isinstance(info.value, Image2PromptError)
    assert is_fatal(info.value)


def test_unknown_host_stops_at_once() -> None:
    with pytest.raises(CaptionerUnavailable, match=r"^http://no-such-host\.invalid/v1: "):
        RemoteCaptioner("m", endpoint="http://no-such-host.invalid/v1", timeout=5)


def test_401_stops_at_once(server: FakeOpenAI) -> None:
    server.require_key = "right-key"
    with pytest.raises(CaptionerUnavailable, match=r"^http://127\.0\.0\.1:\d+/v1: GET /models: HTTP 401"):
        make(server)


def test_401_mid_run_is_fatal(server: FakeOpenAI) -> None:
    with make(server, concurrency=2) as cap:
        server.rule = lambda req: Status(401, message="key revoked")
        with pytest.raises(CaptionerUnavailable, match="HTTP 401.*key revoked"):
            cap.caption(pictures(4))
        items = [WorkItem(i, f"img{i}.png", im, generate=True) for i, im in enumerate(pictures(3))]
        out = encode_items(CaptionOnly(cap), items)
    assert all(isinstance(o, Failure) and o.fatal for o in out)


def test_unknown_model_and_wrong_url(server: FakeOpenAI) -> None:
    with pytest.raises(CaptionerUnavailable, match=r"unknown model 'nope'; the server has: fake-vlm, other-vlm"):
        make(server, model="nope")
    with pytest.raises(CaptionerUnavailable, match="HTTP 404: is this the API's base URL"):
        RemoteCaptioner("fake-vlm", endpoint=server.url.removesuffix("/v1") + "/api")
    server.models_status = 500
    with pytest.raises(CaptionerUnavailable, match=r"GET /models failed after 2 tries \(HTTP 500"):
        make(server, retries=1)


def test_whole_path_given_as_endpoint(server: FakeOpenAI) -> None:
    with make(server) as cap0:
        pass
    with RemoteCaptioner("fake-vlm", endpoint=server.url + "/chat/completions/") as cap:
        assert cap.endpoint == cap0.endpoint == server.url


# -- the key ------------------------------------------------------------------------------------
@pytest.mark.parametrize("var", ["IMAGE2PROMPT_CAPTION_API_KEY", "OPENAI_API_KEY"])
def test_key_sent_and_never_shown(server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture, var: str) -> None:
    secret = "sk-test-5ecret-value"
    server.require_key = secret
    monkeypatch.setenv(var, secret)
    if var == "OPENAI_API_KEY":
        monkeypatch.setenv("IMAGE2PROMPT_CAPTION_API_KEY", "")  # empty: the next one is used
    caplog.set_level(logging.DEBUG)
    with make(server) as cap:
        server.then(Status(429, retry_after=0.05), Answer("ok"))
        assert cap.caption(pictures(1)) == ["ok"]
        shown = [repr(cap), str(vars(cap).get("url")), str(vars(cap).get("endpoint"))]
        server.rule = lambda req: Status(403, message="forbidden")
        with pytest.raises(CaptionerUnavailable) as info:
            cap.caption(pictures(2)[1:])  # another image: the first one's caption is kept
        shown.append(str(info.value))
    assert all(r.headers.get("Authorization") == f"Bearer {secret}" for r in server.requests)
    assert any("captioning with fake-vlm" in r.getMessage() for r in caplog.records)
    logged = [r.getMessage() for r in caplog.records] + [caplog.text]
    assert not [t for t in logged + shown if secret in t]
    for req in server.requests:
        assert secret not in str(req.body)


def test_load_captioner_reads_the_environment(server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    from image2prompt.models import load_captioner

    monkeypatch.setenv("IMAGE2PROMPT_CAPTION_ENDPOINT", server.url)
    monkeypatch.setenv("IMAGE2PROMPT_CAPTION_CONCURRENCY", "2")
    cap = load_captioner("openai:", max_new_tokens=20, instruction="Say what you see.")  # Config.caption_prompt
    try:
        assert isinstance(cap, RemoteCaptioner)
        assert (cap.name, cap.model, cap.concurrency, cap.max_tokens) == ("openai:", "fake-vlm", 2, 20)
        assert cap.name == parse_caption_name("openai:").name  # what a run's identity expects
        assert cap.caption(pictures(2)) == ["an image 40 pixels wide", "an image 41 pixels wide"]
        assert server.chats[0].body["messages"][0]["content"][1]["text"] == "Say what you see."
    finally:
        cap.close()
    other = load_captioner("openai:other-vlm", concurrency=1)
    assert isinstance(other, RemoteCaptioner) and other.model == "other-vlm"
    other.close()
    monkeypatch.setenv("IMAGE2PROMPT_CAPTION_CONCURRENCY", "many")
    with pytest.raises(ModelLoadError, match="IMAGE2PROMPT_CAPTION_CONCURRENCY='many'"):
        load_remote_captioner("openai:", None)


def test_requests_record_what_was_sent(server: FakeOpenAI) -> None:
    """The helper's own record, used above: a request's image round-trips."""
    req = Request("POST", "/v1/chat/completions", {}, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                            + base64.b64encode(_png(7)).decode()}}]}]})
    assert req.image is not None and req.image.width == 7


def _png(width: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, 3)).save(buf, format="PNG")
    return buf.getvalue()


# -- a real OpenAI-compatible server ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(transformers_cli() is None,
                    reason="`transformers serve` is not installed (pip install 'transformers[serving]')")
def test_transformers_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.vlms import make_llava_dir

    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    folder = make_llava_dir(tmp_path / "tiny-llava")
    with serve_transformers(folder, log_path=tmp_path / "serve.log") as url:
        with RemoteCaptioner(endpoint=url, concurrency=2, max_tokens=8, backoff=0.1) as cap:
            assert cap.model == str(folder)
            got = cap.caption(pictures(3))
    assert len(got) == 3
    assert all(isinstance(t, str) and t and "\n" not in t for t in got)
