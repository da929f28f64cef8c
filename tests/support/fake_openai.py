"""A small real OpenAI-compatible HTTP server on loopback, for the remote captioner's tests.

:class:`FakeOpenAI` answers ``GET /v1/models`` and ``POST /v1/chat/completions`` from a
``ThreadingHTTPServer`` in a thread, records every request (headers, JSON body, when it
started and ended, how many were in flight) and behaves as each test asks: a behaviour is
chosen per chat request by ``rule(request)`` (the request's JSON and its image), else taken
from the ``script`` queue, else :class:`Answer` (a caption that names the image's width, so
a test can check the order). :func:`serve_transformers` starts a real one,
``transformers serve``, on a model folder.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


# -- behaviours ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """A chat completion; ``text`` None: ``"an image N pixels wide"`` for the request's image."""

    text: str | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class Status:
    """An error status with an OpenAI-style error body, and a ``Retry-After`` when given."""

    code: int
    retry_after: float | None = None
    message: str = "fake error"


@dataclass(frozen=True)
class Slow:
    """An answer that takes ``seconds`` (longer than the client waits, in the timeout tests)."""

    seconds: float


@dataclass(frozen=True)
class Truncated:
    """A 200 whose JSON body is cut off halfway (with a matching Content-Length)."""


Behaviour = Answer | Status | Slow | Truncated


@dataclass
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any = None  # the parsed JSON (chat requests)
    started: float = 0.0
    ended: float = 0.0
    status: int = 0

    @property
    def image_urls(self) -> list[str]:
        """The ``image_url`` parts' URLs of a chat request."""
        out = []
        for message in (self.body or {}).get("messages", []):
            content = message.get("content")
            if isinstance(content, list):
                out.extend(p["image_url"]["url"] for p in content if p.get("type") == "image_url")
        return out

    @property
    def image(self) -> Image.Image | None:
        """The request's (first) image, decoded from its ``data:`` URL."""
        urls = self.image_urls
        if not urls or not urls[0].startswith("data:"):
            return None
        return Image.open(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1])))


@dataclass
class FakeOpenAI:
    """The server's state: what it serves, how it behaves and what it saw."""

    models: list[str] = field(default_factory=lambda: ["fake-vlm", "other-vlm"])
    script: deque[Behaviour] = field(default_factory=deque)  # the next chat requests' behaviours
    rule: Callable[[Request], Behaviour | None] | None = None  # asked first, per chat request
    models_status: int | None = None  # answer GET /models with this error status instead
    require_key: str | None = None  # 401 unless "Authorization: Bearer <key>"
    requests: list[Request] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    url: str = ""  # the API's base URL (.../v1), once serving
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def then(self, *behaviours: Behaviour) -> FakeOpenAI:
        """Queue behaviours for the next chat requests, in order."""
        self.script.extend(behaviours)
        return self

    @property
    def chats(self) -> list[Request]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def _next(self, request: Request) -> Behaviour:
        if self.rule is not None:
            chosen = self.rule(request)
            if chosen is not None:
                return chosen
        with self._lock:
            return self.script.popleft() if self.script else Answer()


def caption_for(image: Image.Image | None) -> str:
    """The default answer: names the image's width (so order can be checked)."""
    return f"an image {image.width} pixels wide" if image is not None else "no image"


def completion(text: str, model: str) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def _handler(state: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:  # the client gave up (a timeout test)
                pass

        def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
            self._send(code, json.dumps(obj).encode(), headers)

        def _error(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
            self._json(code, {"error": {"message": message, "type": "fake", "code": code}}, headers)

        def _authorised(self) -> bool:
            if state.require_key is None:
                return True
            return self.headers.get("Authorization") == f"Bearer {state.require_key}"

        def _record(self, body: Any = None) -> Request:
            req = Request(self.command, self.path, dict(self.headers.items()), body, time.monotonic())
            with state._lock:
                state.requests.append(req)
            return req

        def do_GET(self) -> None:
            req = self._record()
            if self.path.rstrip("/") == "/health":
                req.status = 200
                self._json(200, {"status": "ok"})
            elif self.path.rstrip("/") != "/v1/models":
                req.status = 404
                self._error(404, f"no route {self.path}")
            elif not self._authorised():
                req.status = 401
                self._error(401, "Incorrect API key provided")
            elif state.models_status is not None:
                req.status = state.models_status
                self._error(state.models_status, "models unavailable")
            else:
                req.status = 200
                self._json(200, {"object": "list", "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in state.models]})
            req.ended = time.monotonic()

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            req = self._record(body)
            try:
                self._chat(req)
            finally:
                req.ended = time.monotonic()

        def _chat(self, req: Request) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                req.status = 404
                return self._error(404, f"no route {self.path}")
            if not self._authorised():
                req.status = 401
                return self._error(401, "Incorrect API key provided")
            if not isinstance(req.body, dict):
                req.status = 400
                return self._error(400, "the body is not JSON")
            if req.body.get("model") not in state.models:
                req.status = 404
                return self._error(404, f"The model {req.body.get('model')!r} does not exist")
            with state._lock:
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                behaviour = state._next(req)
                if isinstance(behaviour, Answer):
                    if behaviour.delay:
                        state._stop.wait(behaviour.delay)
                    req.status = 200
                    text = behaviour.text if behaviour.text is not None else caption_for(req.image)
                    self._json(200, completion(text, req.body["model"]))
                elif isinstance(behaviour, Status):
                    headers = {} if behaviour.retry_after is None else {"Retry-After": f"{behaviour.retry_after:g}"}
                    req.status = behaviour.code
                    self._error(behaviour.code, behaviour.message, headers)
                elif isinstance(behaviour, Slow):
                    state._stop.wait(behaviour.seconds)
                    req.status = 200
                    self._json(200, completion("too late", req.body["model"]))
                else:
                    whole = json.dumps(completion("cut off", req.body["model"])).encode()
                    req.status = 200
                    self._send(200, whole[: len(whole) // 2])
            finally:
                with state._lock:
                    state.in_flight -= 1

    return Handler


@contextmanager
def fake_openai(state: FakeOpenAI | None = None, *, monkeypatch: Any = None) -> Iterator[FakeOpenAI]:
    """Serve ``state`` (a new :class:`FakeOpenAI` when None) on a free loopback port; its
    ``url`` is the API's base URL. With ``monkeypatch``, proxy variables are unset first, so
    nothing leaves the machine. Stops the server on exit."""
    state = state or FakeOpenAI()
    if monkeypatch is not None:
        for var in PROXY_VARIABLES:
            monkeypatch.delenv(var, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        state._stop.set()  # ends slow answers
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def transformers_cli() -> str | None:
    """The ``transformers`` command beside this Python, when its ``serve`` can run (the
    ``transformers[serving]`` extra: FastAPI, uvicorn, openai), else None."""
    exe = Path(sys.executable).with_name("transformers")
    if not exe.is_file():
        return None
    import importlib.util

    for module in ("fastapi", "uvicorn", "openai"):
        if importlib.util.find_spec(module) is None:
            return None
    return str(exe)


@contextmanager
def serve_transformers(folder: Path, *, log_path: Path, startup_s: float = 240.0) -> Iterator[str]:
    """Run ``transformers serve FOLDER --device cpu`` on a free loopback port until ``/health``
    answers 200; yields the API's base URL and stops the server by its PID on exit."""
    import httpx

    exe = transformers_cli()
    assert exe is not None, "transformers serve is not installed"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([exe, "serve", str(folder), "--device", "cpu", "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {proc.returncode}:\n"
                                   + log_path.read_text(errors="replace")[-3000:])
            try:
                if httpx.get(f"{base}/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve did not become healthy in {startup_s:g} s:\n"
                                   + log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.5)
        yield f"{base}/v1"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
