"""The service against hostile or sloppy clients (issue 28), on real loopback servers: deep JSON,
big JSON, slow and vanishing clients, host checks, multipart edge cases, names and paths, and the
A1111 clients' expectations."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

from image2prompt import SearchSettings
from image2prompt.cli.main import cli
from image2prompt.prompt.caption import clean_given_caption
from image2prompt.server import ServerConfig, create_app
from tests.conftest import make_images
from tests.support.http import PROXY_VARIABLES, serve_folder
from tests.support.server import running_app

SAFETY = 60  # seconds a socket read may wait before the test gives up (never reached when the server is right)


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def picture() -> bytes:
    return png(make_images(3)[2])


def assert_error(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and words in body["error"] and body["detail"] == body["error"]
    assert "Traceback" not in r.text


def wait_for(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def server_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("image2prompt.server")]


def multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "b0undary", close: bool = True) -> bytes:
    """A multipart/form-data body built by hand (exact bytes: odd file names, a missing ending)."""
    out = b""
    for name, filename, data in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        out += (b"Content-Type: image/png\r\n" if filename is not None else b"") + b"\r\n" + data + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def post_multipart(url: str, body: bytes, boundary: str = "b0undary") -> httpx.Response:
    return httpx.post(url, content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"},
                      timeout=120)


# --- JSON: depth and size --------------------------------------------------------------------------------


def test_deeply_nested_json_is_a_400_and_only_bugs_log_tracebacks(server_url, serve_interrogator, picture,
                                                                   monkeypatch, caplog):
    deep = b"[" * 100_000 + b"]" * 100_000
    nested_value = b'{"image": "x", "mode": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    with caplog.at_level(logging.INFO, logger="image2prompt.server"):
        for route, body in (("/interrogator/prompt", deep), ("/v1/interrogate", deep), ("/v1/analyze", deep),
                            ("/sdapi/v1/interrogate", nested_value)):
            r = httpx.post(server_url + route, content=body, headers={"content-type": "application/json"})
            assert_error(r, 400, "nested too deeply")
        many = json.dumps({"image": "x"} | {f"k{i}": i for i in range(100_000)})  # each key an error
        r = httpx.post(server_url + "/v1/interrogate", content=many, headers={"content-type": "application/json"})
        assert_error(r, 422, "100000 problems, the first 10: k0: ")
        assert len(r.content) < 2000  # a few of the problems, not a hundred thousand
        wait_for(lambda: sum(" 400 " in r.getMessage() for r in server_lines(caplog)) >= 4)
        # a client's bad body is not a bug: no ERROR line, no traceback in the log
        assert not [r for r in server_lines(caplog) if r.levelno >= logging.ERROR or r.exc_info]

        def explode(*args, **kwargs):
            raise RuntimeError("secret internal detail")

        monkeypatch.setattr(serve_interrogator, "analyze_features", explode)
        r = httpx.post(server_url + "/v1/analyze", files={"image": ("x.png", picture, "image/png")}, timeout=120)
        assert_error(r, 500, "internal error")
        wait_for(lambda: any(" 500 " in r.getMessage() for r in server_lines(caplog)))
    # a bug (a 500), as docs/serve.md says: its traceback in the server's log, once, never to the client
    errors = [r for r in server_lines(caplog) if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info and "secret" not in r.text


def test_json_is_parsed_off_the_event_loop(server_url, picture, monkeypatch):
    """A big JSON body takes seconds to parse; the server must answer others meanwhile. The parse of
    the marked body is held at a gate: /healthz must still answer (it cannot if parsing blocks the loop)."""
    entered, gate = threading.Event(), threading.Event()
    real = json.loads

    def gated(s, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(s, (bytes, bytearray, str)) and ("GATE-MARK" in s if isinstance(s, str) else b"GATE-MARK" in s):
            entered.set()
            gate.wait(2 * SAFETY)
        return real(s, *args, **kwargs)

    monkeypatch.setattr(json, "loads", gated)
    body = json.dumps({"image": base64.b64encode(picture).decode(), "mode": "fast", "caption": "GATE-MARK"})
    result: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: result.append(httpx.post(
        server_url + "/v1/interrogate", content=body, headers={"content-type": "application/json"}, timeout=120)))
    sender.start()
    try:
        assert entered.wait(SAFETY), "the body was never parsed"
        # the gate holds far longer than this wait: only a loop left free can answer in time
        assert httpx.get(server_url + "/healthz", timeout=SAFETY / 4).json() == {"status": "ok"}
    finally:
        gate.set()
        sender.join(SAFETY)
    assert result and result[0].status_code == 200, result and result[0].text


# --- the API docs --------------------------------------------------------------------------------------


def test_api_docs_need_nothing_from_the_internet_and_no_key(serve_interrogator, monkeypatch):
    with running_app(create_app(serve_interrogator, ServerConfig(api_key="k3y")), monkeypatch) as base:
        for page in ("/docs", "/redoc"):
            r = httpx.get(base + page)
            assert r.status_code == 200, (page, r.text)
            urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", r.text)
            assert urls and not [u for u in urls if "://" in u or u.startswith("//")], (page, urls)
            scripts = re.findall(r"""<script[^>]+src=['"]([^'"]+)['"]""", r.text)
            assert scripts, page
            for u in urls:  # every asset the page loads is served here, with no key
                asset = httpx.get(base + u)
                assert asset.status_code == 200 and len(asset.content) > 100, (page, u, asset.status_code)
        assert httpx.get(base + "/openapi.json").status_code == 200
        assert httpx.get(base + "/v1/models").status_code == 401  # the API itself still needs the key


# --- slow and vanishing clients ---------------------------------------------------------------------------


@contextmanager
def serve_like_the_cli(app, config: ServerConfig) -> Iterator[str]:
    """``app`` served with the uvicorn settings ``image2prompt serve`` uses (its HTTP protocol)."""
    import uvicorn

    from image2prompt.server.protocol import http_protocol

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                           http=http_protocol(config.header_timeout)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base + "/readyz"), 120)
        yield base
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def raw(base: str) -> socket.socket:
    host, port = base.rsplit("/", 1)[1].split(":")
    s = socket.create_connection((host, int(port)))
    s.settimeout(SAFETY)
    return s


def read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_slow_headers_and_stalled_bodies_are_cut_off_and_a_vanished_client_is_499(serve_interrogator, monkeypatch,
                                                                                  caplog):
    for var in PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    cfg = ServerConfig(header_timeout=0.5, body_timeout=0.5)
    with caplog.at_level(logging.INFO, logger="image2prompt.server"), \
            serve_like_the_cli(create_app(serve_interrogator, cfg), cfg) as base:
        silent = raw(base)  # opens a connection and sends nothing
        slow = raw(base)
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")  # headers never finished
        assert read_all(slow) == b"" and read_all(silent) == b""  # closed by the server, not held
        stalled = raw(base)
        stalled.sendall(b"POST /interrogator/prompt HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json"
                        b"\r\nContent-Length: 1000\r\n\r\n{\"image\": \"AAAA")
        answer = read_all(stalled)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"stalled" in answer
        # a kept-alive connection: a first request answered, then a second one trickling its headers
        kept = raw(base)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200 ")
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: loc")
        assert read_all(kept) == b""
        # a client that goes away mid-body: its own doing, logged as 499 at info, no traceback
        gone = raw(base)
        gone.sendall(b"POST /v1/interrogate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 100000\r\n\r\n{\"image\": \"AAAA")
        time.sleep(0.1)  # let the server start reading the body (the test passes either way)
        gone.close()
        wait_for(lambda: any(" POST /v1/interrogate 499 " in r.getMessage() for r in server_lines(caplog)))
        assert httpx.get(base + "/healthz").status_code == 200
    assert not [r for r in server_lines(caplog) if r.levelno >= logging.WARNING or r.exc_info]
    help_text = CliRunner().invoke(cli, ["serve", "--help"]).output
    assert "--header-timeout" in help_text and "--body-timeout" in help_text


# --- host checks ------------------------------------------------------------------------------------------


def test_any_loopback_host_and_a_missing_host_are_accepted(serve_interrogator, monkeypatch):
    with running_app(create_app(serve_interrogator, ServerConfig(loopback_only=True)), monkeypatch) as base:
        port = base.rsplit(":", 1)[1]
        for host in (f"127.0.0.2:{port}", f"127.1.2.3:{port}", f"[::1]:{port}", "localhost"):
            for path in ("/readyz", "/v1/models"):
                assert httpx.get(base + path, headers={"Host": host}).status_code == 200, (host, path)
        s = raw(base)  # HTTP/1.0 needs no Host header: no page of another site sends such a request
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert read_all(s).startswith(b"HTTP/1.1 200 ")
        assert_error(httpx.get(base + "/readyz", headers={"Host": f"127.0.0.1.evil.example:{port}"}), 421,
                     "localhost only")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def test_serve_on_another_loopback_address_answers(tiny_open_clip: Path, tmp_path: Path):
    port = free_port("127.0.0.2")
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES} | {
        "HF_HUB_OFFLINE": "1", "IMAGE2PROMPT_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "image2prompt", "serve", "--host", "127.0.0.2", "--port", str(port),
                             "--clip", f"local-dir:{tiny_open_clip}", "--caption-model", "none"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                return httpx.get(f"http://127.0.0.2:{port}/healthz", timeout=2).status_code in (200, 421)
            except httpx.HTTPError:
                return False

        wait_for(up, 180)
        assert httpx.get(f"http://127.0.0.2:{port}/healthz").status_code == 200
        assert httpx.get(f"http://127.0.0.2:{port}/readyz").status_code in (200, 503)  # loading, not refused
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


# --- multipart ---------------------------------------------------------------------------------------------


def test_a_cut_off_multipart_body_is_a_400_and_json_routes_refuse_multipart(server_url, picture):
    cut = multipart([("mode", None, b"fast"), ("image", "a.png", picture)], close=False)
    assert_error(post_multipart(server_url + "/v1/interrogate", cut), 400, "closing boundary")
    cut_batch = multipart([("mode", None, b"fast"), ("files", "a.png", picture)], close=False)
    assert_error(post_multipart(server_url + "/v1/batch", cut_batch), 400, "closing boundary")
    whole = multipart([("mode", None, b"fast"), ("image", "a.png", picture)])
    assert post_multipart(server_url + "/v1/interrogate", whole).status_code == 200
    for route in ("/interrogator/prompt", "/interrogator/analyze", "/sdapi/v1/interrogate"):
        r = httpx.post(server_url + route, files={"image": ("a.png", picture, "image/png")}, data={"mode": "fast"})
        assert_error(r, 415, "send JSON")


# --- names: upload names, captions, model paths ----------------------------------------------------------


@pytest.mark.parametrize("filename, shown", [("../../etc/passwd", "passwd"), ("a\x00b.png", "ab.png"),
                                             ("photo\u202egnp.exe", "photognp.exe"), ("..", "upload"),
                                             ("C:\\Users\\me\\cat.png", "cat.png")])
def test_upload_names_are_reduced_alike_on_every_route(server_url, picture, filename, shown):
    one = post_multipart(server_url + "/v1/interrogate",
                         multipart([("mode", None, b"fast"), ("image", filename, picture)]))
    batch = post_multipart(server_url + "/v1/batch", multipart([("mode", None, b"fast"), ("files", filename, picture)]))
    assert one.status_code == 200 and batch.status_code == 200, (one.text, batch.text)
    assert one.json()["source"] == shown
    assert batch.json()["records"][0]["source"] == shown


def test_control_characters_in_a_caption_become_spaces(server_url, serve_interrogator, picture):
    assert clean_given_caption("a red\x00fox\r\nin\tthe \u202esnow\u2028 ") == "a red fox in the snow"
    assert clean_given_caption("\x00\r\n") == ""
    b64 = base64.b64encode(picture).decode()
    r = httpx.post(server_url + "/v1/interrogate", json={"image": b64, "mode": "classic",
                                                         "caption": "a red\x00fox\r\nin snow"}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["caption"] == "a red fox in snow" and "\n" not in body["prompt"] and "\x00" not in body["prompt"]
    want = serve_interrogator.interrogate(Image.open(io.BytesIO(picture)).convert("RGB"),
                                          settings=SearchSettings(mode="classic"), caption="a red fox in snow")
    assert body["prompt"] == want.prompt


def test_server_paths_never_reach_clients(server_url, serve_interrogator, picture, tiny_open_clip, tiny_blip):
    paths = (str(tiny_open_clip), str(tiny_blip), str(tiny_open_clip.parent))
    b64 = base64.b64encode(picture).decode()
    one = httpx.post(server_url + "/v1/interrogate", json={"image": b64, "mode": "fast", "negative": True},
                     timeout=120)
    assert one.status_code == 200
    result = one.json()
    assert result["clip_model"] == "local-dir:tiny-open-clip" and result["caption_model"] == "local-dir:tiny-blip"
    assert result["negative"]["clip_model"] == "local-dir:tiny-open-clip"
    batch = post_multipart(server_url + "/v1/batch", multipart([("mode", None, b"fast"), ("files", "a.png", picture)]))
    answers = [one, batch, httpx.get(server_url + "/v1/models"), httpx.get(server_url + "/interrogator/models"),
               httpx.post(server_url + "/v1/analyze", json={"image": b64}, timeout=120)]
    answers += [httpx.get(server_url + batch.json()["downloads"][ext]) for ext in ("csv", "jsonl")]
    for r in answers:
        assert r.status_code == 200 and not [p for p in paths if p in r.text], r.text
    # A1111 clients send back the name they were shown
    shown = httpx.get(server_url + "/interrogator/models").json()[0]
    r = httpx.post(server_url + "/interrogator/prompt", json={"image": b64, "clip_model_name": shown, "mode": "fast"},
                   timeout=120)
    assert r.status_code == 200, r.text


# --- A1111 clients --------------------------------------------------------------------------------------------


def test_a1111_defaults_urls_and_basic_auth(serve_interrogator, monkeypatch, picture, tmp_path):
    b64 = base64.b64encode(picture).decode()
    (tmp_path / "a.png").write_bytes(picture)
    with serve_folder(tmp_path, monkeypatch) as files, \
            running_app(create_app(serve_interrogator, ServerConfig(allow_urls=True, api_key="k3y")),
                        monkeypatch) as base:
        key = {"X-API-Key": "k3y"}
        # the extension's mode defaults to fast
        r = httpx.post(base + "/interrogator/prompt", json={"image": b64}, headers=key, timeout=120)
        want = serve_interrogator.interrogate(Image.open(io.BytesIO(picture)).convert("RGB"),
                                              settings=SearchSettings.reference(mode="fast"))
        assert r.status_code == 200 and r.json() == {"prompt": want.prompt}
        # A1111 takes an http(s) URL as the image: fetched through the SSRF-safe download (public addresses only)
        r = httpx.post(base + "/sdapi/v1/interrogate", json={"image": f"{files}/a.png", "model": "clip"}, headers=key)
        assert_error(r, 400, "refused: 127.0.0.1 is not a public address")
        assert_error(httpx.post(base + "/sdapi/v1/interrogate", json={"image": b64, "model": "wd14"}, headers=key),
                     404, "Model not found")
        # A1111's --api-auth user:pass sends HTTP Basic: the key is the password
        basic = {"Authorization": "Basic " + base64.b64encode(b"me:k3y").decode()}
        assert httpx.get(base + "/interrogator/models", headers=basic).status_code == 200
        wrong = {"Authorization": "Basic " + base64.b64encode(b"k3y:nope").decode()}
        assert_error(httpx.get(base + "/interrogator/models", headers=wrong), 401, "API key")
        assert_error(httpx.get(base + "/interrogator/models", headers={"Authorization": "Basic %%%"}), 401, "API key")
    with running_app(create_app(serve_interrogator, ServerConfig()), monkeypatch) as base:
        r = httpx.post(base + "/sdapi/v1/interrogate", json={"image": "https://example.com/a.png", "model": "clip"})
        assert_error(r, 400, "fetching URLs is off")
