"""The FastAPI application of ``image2prompt serve``.

Thin over the library: images are decoded by :func:`image2prompt.io.load_image` (in
worker threads, with the upload, pixel and format limits), searched through one
:class:`~image2prompt.service.MicroBatcher`, and answered with the library's own
``Result``/``Analysis`` dictionaries. Batch uploads become the same records as
``image2prompt batch`` (:func:`image2prompt.batch.records.make_record`) and the same
caption files (:mod:`image2prompt.batch.sidecars`).

Every error is a real HTTP status with a JSON body ``{"error": "...", "status": N}``;
a traceback never reaches a client (it is logged here). One log line per request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import io
import ipaddress
import json
import logging
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from .. import __version__
from ..batch.records import make_record, records_bytes
from ..batch.sidecars import SidecarOptions, caption_text, sidecar_path
from ..errors import Image2PromptError, ImageLoadError, SettingsError, one_line
from ..io import load_image
from ..io.images import DecodeSlots, download_bytes, input_side_of
from ..io.sources import is_image_filename
from ..modes import caption_free_modes, get_mode, list_modes
from ..prompt.caption import clean_given_caption, is_invisible
from ..service import DEFAULT_QUEUE_BYTES, SERVE_FORMATS, SERVE_MAX_PIXELS, Busy, MicroBatcher, ShuttingDown
from ..settings import DEFAULT_FLOOR, SearchSettings

if TYPE_CHECKING:  # pragma: no cover
    from ..interrogator import Interrogator

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
#: Paths answered without an API key: liveness, readiness, the UI's static page and the API docs
#: (both pages, their schema and, under DOCS_ASSETS, their scripts).
OPEN_PATHS = ("/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
              "/favicon.ico")
#: Where the API docs' scripts and styles are served from (the fastapi-offline package's copies),
#: so /docs and /redoc work with no internet.
DOCS_ASSETS = "/docs-assets"
#: A1111 category names of the reference's tables, for /interrogator/analyze.
A1111_CATEGORIES = {"mediums": "medium", "artists": "artist", "movements": "movement", "trendings": "trending",
                    "flavors": "flavor"}

Loader = Callable[[], "Interrogator"]


@dataclass
class ServerConfig:
    """What ``image2prompt serve`` is told besides the models."""

    api_key: str | None = None  # required (header X-API-Key or Authorization: Bearer) when set
    max_upload_bytes: int = 20 * 1024 * 1024  # one request's body (a batch: max_batch_bytes)
    max_batch_bytes: int = 256 * 1024 * 1024
    max_batch_files: int = 500
    max_pixels: int | None = SERVE_MAX_PIXELS  # checked from the header; decoded, reduced at once to the models' size
    decoders: int = 2  # full-size decodes at once, held by the decoding threads (each 4-8 bytes a pixel meanwhile)
    formats: tuple[str, ...] = SERVE_FORMATS
    allow_urls: bool = False  # fetch {"url": ...}; private and loopback addresses are refused even then
    url_timeout: float = 20.0
    cors_origins: tuple[str, ...] = ()
    timeout: float = 300.0  # seconds a request may wait for its result (504 after)
    max_batch: int = 16  # requests per micro-batch (1: micro-batching off)
    max_wait: float = 0.005  # seconds the worker waits to fill a micro-batch
    max_queue: int = 64  # requests waiting; past it: 503 with Retry-After
    max_queue_bytes: int | None = DEFAULT_QUEUE_BYTES  # decoded images waiting, in bytes; past it: 503 too
    retry_after: int = 1  # seconds, in 503 answers
    batch_keep: int = 16  # finished batch uploads kept for download
    loopback_only: bool = False  # bound to loopback: answer only Host: localhost/127.0.0.1/[::1] (DNS rebinding)
    header_timeout: float = 10.0  # seconds a client may take to send a request's headers (then closed)
    body_timeout: float = 30.0  # seconds a client may pause between two pieces of a body (408 after)


class HTTPError(Exception):
    """An error answer: status and one-line message (and extra headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, one_line(message), headers or {}


# --- request bodies ----------------------------------------------------------------------


class SearchFields(BaseModel):
    """Search settings a request may set (the rest keep their defaults); see SearchSettings."""

    model_config = ConfigDict(extra="forbid")

    mode: str = "best"
    negative: bool = False
    caption: str | None = Field(None, description="Use this caption instead of generating one.")
    # Upper bounds keep one request from holding the shared model worker for minutes.
    beam: int | None = Field(None, le=8)
    max_tokens: int | None = Field(None, le=300)
    candidates: int | None = Field(None, le=8192)
    min_flavors: int | None = Field(None, le=64)
    max_flavors: int | None = Field(None, le=64)
    chunks: bool | None = None
    trace: bool | None = None
    trace_top: int | None = Field(None, le=50)
    floor: float | Literal["off"] | None = Field(
        None, description="Relevance floor (a phrase's margin over its category's median, in standard "
                          "deviations of the image's scores over the whole vocabulary), or \"off\"; "
                          f"omitted or null: the default, {DEFAULT_FLOOR:g}.")

    @field_validator("caption")
    @classmethod
    def _one_line_caption(cls, value: str | None) -> str | None:
        """NUL, CR, LF and other control characters would go into the prompt: one space each."""
        return (clean_given_caption(value) or None) if value is not None else None

    def settings(self) -> SearchSettings:
        given = self.model_dump(exclude={"caption", "image", "url"}, exclude_none=True)
        if given.get("floor") == "off":
            given["floor"] = None
        settings = SearchSettings(score_prompt=True, **given)
        get_mode(settings.mode)  # an unknown mode is the request's error, before any image is read
        return settings


class InterrogateBody(SearchFields):
    """JSON body of POST /v1/interrogate: an image (base64, with or without a data: prefix) or a URL."""

    image: str | None = Field(None, description="Base64 image, optionally a data: URL.")
    url: str | None = Field(None, description="An http(s) URL to fetch (only when the server allows URLs).")


class AnalyzeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str | None = None
    url: str | None = None
    top: int = Field(5, ge=1, le=100)


class A1111PromptBody(BaseModel):
    """The A1111 clip-interrogator extension's request."""

    image: str
    clip_model_name: str | None = None
    caption_model_name: str | None = None
    mode: str = Field("fast", description="A registered mode (plugins' included), or caption.")  # the extension's

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        if value != "caption" and value not in list_modes():
            raise ValueError(f"unknown mode {value!r}; choose one of: {', '.join(list_modes() + ['caption'])}")
        return value


class A1111AnalyzeBody(BaseModel):
    image: str
    clip_model_name: str | None = None


class A1111InterrogateBody(BaseModel):
    """A1111's own /sdapi/v1/interrogate request."""

    image: str
    model: str = "clip"


def _body_doc(model: type[BaseModel], multipart: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI for a route that takes a JSON body or a multipart form."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()},
        "multipart/form-data": {"schema": multipart},
    }}}


_IMAGE_FORM = {"type": "object", "required": ["image"], "properties": {
    "image": {"type": "string", "format": "binary"},
    **{k: {"type": t} for k, t in (("mode", "string"), ("negative", "boolean"), ("caption", "string"),
                                   ("beam", "integer"), ("max_tokens", "integer"), ("candidates", "integer"),
                                   ("min_flavors", "integer"), ("max_flavors", "integer"), ("chunks", "boolean"),
                                   ("floor", "string"))}}}
_ANALYZE_FORM = {"type": "object", "required": ["image"], "properties": {
    "image": {"type": "string", "format": "binary"}, "top": {"type": "integer"}}}
_BATCH_FORM = {"type": "object", "required": ["files"], "properties": {
    "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
    "mode": {"type": "string"}, "negative": {"type": "boolean"}, "prefix": {"type": "string"},
    "suffix": {"type": "string"}}}


# --- the application ------------------------------------------------------------------------


@dataclass
class _State:
    config: ServerConfig
    loader: Loader
    interrogator: Interrogator | None = None
    batcher: MicroBatcher | None = None
    error: str | None = None  # why loading failed
    ready: threading.Event = field(default_factory=threading.Event)
    batches: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    on_load_error: Callable[[str], None] | None = None
    decoding: asyncio.Semaphore = field(init=False)  # config.decoders images decode at a time
    decode_slots: DecodeSlots = field(init=False)  # the same bound, held by the decoding threads
    downloads: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(8))

    def __post_init__(self) -> None:
        self.decoding = asyncio.Semaphore(max(1, self.config.decoders))
        self.decode_slots = DecodeSlots(max(1, self.config.decoders))

    def load(self) -> None:
        try:
            ip = self.loader()
            log.info("embedding the vocabulary tables (cached after the first run)")
            ip.prepare()
            self.batcher = MicroBatcher(ip, max_batch=self.config.max_batch, max_wait=self.config.max_wait,
                                        max_queue=self.config.max_queue,
                                        max_queue_bytes=self.config.max_queue_bytes).start()
            self.interrogator = ip
            self.ready.set()
            log.info("ready: %s%s", ip.clip_name, f" with {ip.caption_name} captions" if ip.caption_name else "")
        except Exception as err:
            self.error = one_line(err) or type(err).__name__
            log.error("loading the models failed: %s", self.error, exc_info=not isinstance(err, Image2PromptError))
            if self.on_load_error is not None:
                self.on_load_error(self.error)

    def need(self) -> tuple[Interrogator, MicroBatcher]:
        if self.error is not None:
            raise HTTPError(503, "the models failed to load (the server's log says why)")
        if not self.ready.is_set() or self.interrogator is None or self.batcher is None:
            raise HTTPError(503, "the models are still loading; try again shortly", {"Retry-After": "5"})
        return self.interrogator, self.batcher


def create_app(interrogator: Interrogator | Loader, config: ServerConfig | None = None, *,
               on_load_error: Callable[[str], None] | None = None) -> FastAPI:
    """The application over a loaded interrogator, or a function that loads one (then called
    in a thread at start-up, so /healthz answers at once and /readyz once it is done)."""
    config = config or ServerConfig()
    loader: Loader = interrogator if callable(interrogator) and not hasattr(interrogator, "encode") \
        else (lambda: interrogator)  # type: ignore[assignment,return-value]
    state = _State(config, loader, on_load_error=on_load_error)

    async def lifespan(app: FastAPI) -> Any:
        thread = threading.Thread(target=state.load, name="image2prompt-load", daemon=True)
        thread.start()
        yield
        if state.batcher is not None:
            await run_in_threadpool(state.batcher.close)

    app = FastAPI(title="image2prompt", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Prompt scaffolds for text-to-image models from images: every phrase keeps "
                              "its CLIP score; artist names are hypotheses. See the README.")
    app.state.i2p = state
    _install_docs(app)
    _install_errors(app)
    _install_middleware(app, config)
    _routes(app, state)
    return app


def _install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their scripts served from here (the copies the
    fastapi-offline package ships), not from a CDN: the pages work on a machine with no internet."""
    from fastapi.openapi.docs import (
        get_redoc_html,
        get_swagger_ui_html,
        get_swagger_ui_oauth2_redirect_html,
    )
    from fastapi.responses import HTMLResponse

    try:
        import fastapi_offline
    except ImportError:  # an install without the serve extra's fastapi-offline: the CDN's copies
        assets = None
    else:
        assets = Path(fastapi_offline.__file__).resolve().parent / "static"
        app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")
    local = {"swagger_js_url": f"{DOCS_ASSETS}/swagger-ui-bundle.js",
             "swagger_css_url": f"{DOCS_ASSETS}/swagger-ui.css",
             "swagger_favicon_url": f"{DOCS_ASSETS}/favicon.png"} if assets else {}
    redoc = {"redoc_js_url": f"{DOCS_ASSETS}/redoc.standalone.js",
             "redoc_favicon_url": f"{DOCS_ASSETS}/favicon.png"} if assets else {}

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=f"{app.title} - API docs",
                                   oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
                                   **{k: root + v for k, v in local.items()})

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc_page(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=f"{root}/openapi.json", title=f"{app.title} - API docs",
                              with_google_fonts=False, **{k: root + v for k, v in redoc.items()})


def _install_middleware(app: FastAPI, config: ServerConfig) -> None:
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    app.add_middleware(_Guard, config=config)  # outermost: log, limit and authenticate every request


class _Guard:
    """ASGI middleware: one log line per request with its latency, the body size limits and the API key."""

    def __init__(self, app: Any, config: ServerConfig) -> None:
        self.app, self.config = app, config
        self.key = config.api_key.encode() if config.api_key else None
        self.loopback = config.loopback_only
        self.origins = set(config.cors_origins)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [0]

        async def send_logged(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        path = scope.get("path", "")
        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                await refusal(scope, receive, send_logged)
                return
            await self.app(scope, _limited(receive, self.body_limit(path), self.config.body_timeout), send_logged)
        except ClientDisconnect:  # the client went away mid-body: its doing, not a bug (499, as nginx logs it)
            status[0] = status[0] or 499
        except Exception as err:
            log.error("%s %s failed: %s", scope.get("method", "-"), path, type(err).__name__, exc_info=err)
            if not status[0]:
                await _error(500, "internal error (the server logged the details)")(scope, receive, send_logged)
        finally:
            client = scope.get("client") or ("-", 0)
            shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in path[:300])  # one line, always
            log.info("%s %s %s %d %.1fms", client[0], scope.get("method", "-"), shown, status[0],
                     1000 * (time.perf_counter() - started))

    def body_limit(self, path: str) -> int:
        """Bytes a request body may have: a batch's limit, or room for one image in base64 plus fields."""
        if path == "/v1/batch":
            return self.config.max_batch_bytes
        return self.config.max_upload_bytes * 4 // 3 + 64 * 1024

    def _refusal(self, scope: dict[str, Any], path: str) -> Response | None:
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        host = headers.get("host", b"").decode("latin-1").lower()
        if self.loopback and host and not _loopback_host(host):
            # DNS rebinding: a page on evil.example that resolves to 127.0.0.1 sends Host: evil.example
            # (a browser always sends Host; a request without one, HTTP/1.0's, is no such page)
            return _error(421, f"this server answers to localhost only, not to Host {host[:80]!r}")
        origin = headers.get("origin", b"").decode("latin-1")
        if origin and scope.get("method") not in ("GET", "HEAD", "OPTIONS") and origin not in self.origins \
                and _hostport(origin) != host:
            # a page of another site POSTing a form here (no CORS preflight for multipart): refused
            return _error(403, f"requests from pages on {origin[:80]} are not allowed (see --cors-origin)")
        if self.key is not None and scope.get("method") != "OPTIONS" and path not in OPEN_PATHS \
                and not path.startswith(("/static/", DOCS_ASSETS + "/")):
            given = headers.get("x-api-key", b"")
            auth = headers.get("authorization", b"")
            if not given and auth[:7].lower() == b"bearer ":
                given = auth[7:].strip()
            elif not given and auth[:6].lower() == b"basic ":  # A1111's --api-auth user:pass: the key as password
                try:
                    given = base64.b64decode(auth[6:].strip(), validate=True).partition(b":")[2]
                except (binascii.Error, ValueError):
                    given = b""
            if not hmac.compare_digest(given, self.key):
                return _error(401, "an API key is needed: send it as X-API-Key, Authorization: Bearer, or the "
                                   "password of HTTP Basic auth", {"WWW-Authenticate": "Bearer"})
        declared = headers.get("content-length", b"")
        limit = self.body_limit(path)
        if declared.isdigit() and int(declared) > limit:
            return _error(413, f"request body of {int(declared)} bytes is over the {limit}-byte limit")
        return None


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


def _loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback: localhost, any of 127.0.0.0/8, ::1."""
    name = _hostname(host).strip("[]").rstrip(".")
    if name in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _hostname(host: str) -> str:
    """``Host`` without its port (``[::1]:7860`` -> ``[::1]``)."""
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _hostport(origin: str) -> str:
    """``https://a.example:8443`` -> ``a.example:8443`` (what the Host header of a same-origin request says)."""
    return origin.split("://", 1)[-1].rstrip("/").lower()


class _BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit


class _BodyTimeout(Exception):
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout


def _limited(receive: Any, limit: int, timeout: float | None = None) -> Any:
    """``receive`` with the body's size limit and, until the body is complete, ``timeout``
    seconds for each piece of it (a client that stalls mid-body gets 408, not a held connection)."""
    seen = [0]
    done = [False]

    async def wrapped() -> dict[str, Any]:
        if done[0] or timeout is None:
            message: dict[str, Any] = await receive()
        else:
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except asyncio.TimeoutError:
                raise _BodyTimeout(timeout) from None
        if message.get("type") == "http.request":
            seen[0] += len(message.get("body", b""))
            if seen[0] > limit:
                raise _BodyTooLarge(limit)
            done[0] = not message.get("more_body", False)
        elif message.get("type") == "http.disconnect":
            done[0] = True
        return message

    return wrapped


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The error body: ``error`` and ``status``, and ``detail`` (FastAPI's and A1111's key, which
    their clients read) with the same message."""
    text = one_line(message)
    return JSONResponse({"error": text, "detail": text, "status": status}, status_code=status, headers=headers)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, err: HTTPError) -> JSONResponse:
        return _error(err.status, err.message, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(err.errors()))

    @app.exception_handler(_BodyTooLarge)
    async def _too_large(request: Request, err: _BodyTooLarge) -> JSONResponse:
        return _error(413, f"request body is over the {err.limit}-byte limit")

    @app.exception_handler(_BodyTimeout)
    async def _body_timeout(request: Request, err: _BodyTimeout) -> JSONResponse:
        return _error(408, f"the request body stalled: nothing came for {err.timeout:g} s",
                      {"Connection": "close"})

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, err: ClientDisconnect) -> JSONResponse:
        # the client closed the connection before its body was complete: logged as 499 (nobody reads this)
        return _error(499, "client closed the request")

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)
        return _error(500, "internal error (the server logged the details)")


def _validation_message(errors: Any, shown: int = 10) -> str:
    """The first ``shown`` problems (a body with a million unknown keys has a million)."""
    parts = []
    for e in errors[:shown]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body",))[:100] or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    count = f"{len(errors)} problems, the first {shown}: " if len(errors) > shown else ""
    return "invalid request: " + count + "; ".join(parts)


def _image_error(err: ImageLoadError) -> HTTPError:
    status = {"too_large": 413, "format": 415, "refused": 400}.get(err.kind, 400)
    return HTTPError(status, str(err))


# --- reading inputs -------------------------------------------------------------------------


async def _parse(request: Request, model: type[BaseModel]) -> tuple[BaseModel, bytes | None, str]:
    """The request's fields (validated by ``model``) and its image bytes, from JSON or a multipart
    form; returns (fields, image bytes or None when a URL was given, a display name)."""
    ctype = _content_type(request)
    if ctype == "multipart/form-data":
        form = await _form(request, max_files=1, max_fields=64)
        raw: dict[str, Any] = {}
        upload = None
        for key, value in form.multi_items():
            if key == "image" and hasattr(value, "read"):
                upload = value
            elif isinstance(value, str):
                raw[key] = value
            else:
                raise HTTPError(422, f"invalid request: {key}: only the image field may be a file")
        if upload is None:
            raise HTTPError(422, "invalid request: image: a file field named image is required")
        fields = _validate(model, raw)
        data = await upload.read()
        return fields, data, _upload_name(getattr(upload, "filename", None))
    if ctype in ("application/json", ""):
        fields = await _json(request, model)
        image, url = getattr(fields, "image", None), getattr(fields, "url", None)
        if image and url:
            raise HTTPError(422, "invalid request: give image or url, not both")
        if image:
            return fields, await run_in_threadpool(_b64, image), "image"  # off the loop: up to ~27 MB
        if url:
            return fields, None, url
        raise HTTPError(422, "invalid request: image: a base64 image (or a url) is required")
    raise HTTPError(415, f"content type {ctype!r} is not accepted: send JSON or multipart/form-data")


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


class _MultiPart(MultiPartParser):
    """Starlette's multipart parser, noting whether the closing boundary came (python-multipart
    takes a body that stops short as if it had ended, dropping the part it was in)."""

    complete = False

    def on_end(self) -> None:
        self.complete = True


async def _form(request: Request, *, max_files: int, max_fields: int) -> FormData:
    """A multipart form, refused (400) when it is malformed or ends before its closing boundary."""
    try:
        parser = _MultiPart(request.headers, request.stream(), max_files=max_files, max_fields=max_fields)
        form = await parser.parse()
    except MultiPartException as err:
        raise HTTPError(400, f"invalid multipart body: {err.message}") from None
    if not parser.complete:
        await form.close()
        raise HTTPError(400, "invalid multipart body: it ends before its closing boundary (a cut-off upload?)")
    return form


def _upload_name(filename: str | None) -> str:
    """What an uploaded file is called in answers and records: its base name (no folders, no
    ``..``), without control or format characters (NUL, CR, LF, bidirectional overrides)."""
    base = PurePosixPath((filename or "").replace("\\", "/")).name
    base = "".join(c for c in base if not is_invisible(c)).strip()[:255]
    return base if base not in ("", ".", "..") else "upload"


def _loads(body: bytes, model: type[BaseModel]) -> Any:
    """Parse and validate a JSON body (run off the event loop: a large body takes seconds)."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise HTTPError(400, "the body is not valid JSON: nested too deeply") from None
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise HTTPError(400, "the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise HTTPError(422, "invalid request: the JSON body must be an object")
    try:
        return _validate(model, payload)
    except RecursionError:
        raise HTTPError(400, "the body is not valid JSON: nested too deeply") from None


async def _json(request: Request, model: type[BaseModel]) -> Any:
    """A JSON body validated by ``model`` (read here, so the body limit answers 413, not 400);
    parsed in a worker thread, so a large body does not stall every other request."""
    ctype = _content_type(request)
    if ctype not in ("application/json", "") and not ctype.endswith("+json"):
        raise HTTPError(415, f"content type {ctype!r} is not accepted here: send JSON (application/json)")
    body = await request.body()
    return await run_in_threadpool(_loads, body, model)


def _json_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _validate(model: type[BaseModel], raw: dict[str, Any]) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise HTTPError(422, _validation_message(err.errors())) from None


def _b64(text: str) -> bytes:
    """Base64 (standard or URL-safe, padding optional), with or without a data: URL prefix."""
    body = text.strip()
    if body.startswith("data:"):
        head, _, body = body.partition(",")
        if ";base64" not in head:
            raise HTTPError(422, "invalid request: image: a data: URL must be base64-encoded")
    body = "".join(body.split())
    body += "=" * (-len(body) % 4)
    try:
        return base64.b64decode(body.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise HTTPError(422, "invalid request: image: not valid base64") from None


async def _decode(state: _State, data: bytes | None, name: str) -> Any:
    cfg = state.config
    try:
        if data is None:
            if not cfg.allow_urls:
                raise HTTPError(400, "fetching URLs is off on this server (start it with --allow-urls)")
            async with state.downloads:
                data = await run_in_threadpool(download_bytes, name, cfg.url_timeout, public_only=True,
                                               max_bytes=cfg.max_upload_bytes)
        if len(data) > cfg.max_upload_bytes:
            raise HTTPError(413, f"{name}: image of {len(data)} bytes is over the {cfg.max_upload_bytes}-byte limit")
        # Reduced right after decoding to what the loaded models need, so no waiting request holds
        # a full-size image; the decoding thread itself holds one of config.decoders slots (the
        # asyncio semaphore alone is given back when a request is cancelled mid-decode).
        async with state.decoding:
            return await run_in_threadpool(_load, data, name, cfg, input_side_of(state.interrogator),
                                           state.decode_slots)
    except ImageLoadError as err:
        raise _image_error(err) from None


def _load(data: bytes, name: str, cfg: ServerConfig, reduce_to: int | None = None, slots: Any = None) -> Any:
    """Decode an upload (in a worker thread), holding one of ``slots`` (:class:`DecodeSlots`) while
    it decodes, reduced to ``reduce_to`` (the models' :attr:`~image2prompt.Interrogator.input_side`)."""
    from ..io import ImageSource

    source = ImageSource(name, "bytes", data)
    if slots is None:
        return load_image(source, max_pixels=cfg.max_pixels, formats=cfg.formats, reduce_to=reduce_to)
    with slots.hold(data):
        return load_image(source, max_pixels=cfg.max_pixels, formats=cfg.formats, reduce_to=reduce_to)


# --- waiting for the model ------------------------------------------------------------------


async def _wait(request: Request, submit: Callable[[], Future[Any]], timeout: float) -> Any:
    """Submit to the batcher and wait; a timeout (504) or a client gone cancels the work if it
    has not started."""
    try:
        fut = submit()
    except Busy as err:
        raise HTTPError(503, str(err), {"Retry-After": str(request.app.state.i2p.config.retry_after)}) from None
    except ShuttingDown as err:
        raise HTTPError(503, str(err)) from None
    except SettingsError as err:
        raise HTTPError(422, str(err)) from None
    waiter = asyncio.wrap_future(fut)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            started = not fut.cancel()
            waiter.add_done_callback(_retrieve)
            raise HTTPError(504, f"no result within {timeout:g} s" + (
                "" if started else "; the request was cancelled before it reached the model"))
        done, _ = await asyncio.wait({waiter}, timeout=min(0.25, left))
        if done:
            break
        if await request.is_disconnected():
            fut.cancel()
            waiter.add_done_callback(_retrieve)
            log.info("%s %s: the client went away; its request was cancelled", request.method, request.url.path)
            raise HTTPError(499, "client closed the request")
    try:
        return waiter.result()
    except ImageLoadError as err:
        raise _image_error(err) from None
    except SettingsError as err:
        raise HTTPError(422, one_line(err)) from None
    except ShuttingDown as err:
        raise HTTPError(503, str(err)) from None
    except Image2PromptError as err:  # e.g. features of other encoders: the request's fault, said in words
        if isinstance(err, ValueError):
            raise HTTPError(422, one_line(err)) from None
        raise
    except asyncio.CancelledError:
        raise HTTPError(503, "the request was cancelled") from None


def _retrieve(fut: Any) -> None:
    """Read an abandoned future's outcome so asyncio does not log it as never retrieved."""
    if not fut.cancelled():
        fut.exception()


def _result_json(ip: Interrogator, result: Any, settings: SearchSettings) -> dict[str, Any]:
    data: dict[str, Any] = _public(ip, result.to_dict())
    data["token_budget"] = settings.max_tokens
    return data


# --- model names: what clients see ----------------------------------------------------------

LOCAL_DIR = "local-dir:"


def shown_model_name(name: str) -> str:
    """A model's name as clients see it: a folder on the server by its base name
    (``local-dir:/srv/models/my-clip`` -> ``local-dir:my-clip``), so the server's paths stay in its log."""
    # a captioner may be given a bare folder
    folder = name.startswith((LOCAL_DIR, "/", "~", "./", "../", "\\")) or name[1:3] in (":/", ":\\")
    if not folder:
        return name  # ARCH/TAG, hf-hub:ORG/REPO, a short captioner name: no path in it
    path = name.removeprefix(LOCAL_DIR)
    base = path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return LOCAL_DIR + (base or "model")


def _model_names(ip: Interrogator) -> list[tuple[str, str]]:
    """(the loaded name, the shown name) of every model, longest first (for replacing inside joined names)."""
    names = [c.name for c in ip.clips] + ([ip.caption_name] if ip.caption_name else [])
    return sorted(((n, shown_model_name(n)) for n in names), key=lambda p: -len(p[0]))


def _public(ip: Interrogator, data: Any) -> Any:
    """A result's or analysis's dictionary with the models' shown names (also in nested results)."""
    if isinstance(data, list):
        return [_public(ip, v) for v in data]
    if not isinstance(data, dict):
        return data
    out = {}
    for key, value in data.items():
        if key in ("clip_model", "caption_model") and isinstance(value, str):
            for real, shown in _model_names(ip):
                value = value.replace(real, shown)
        elif isinstance(value, (dict, list)) and key in ("negative", "result"):
            value = _public(ip, value)
        out[key] = value
    return out


# --- routes ------------------------------------------------------------------------------


def _routes(app: FastAPI, state: _State) -> None:
    cfg = state.config

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", tags=["service"], summary="Liveness: the process answers.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"], summary="Readiness: models loaded and tables embedded.")
    async def readyz() -> JSONResponse:
        if state.ready.is_set():
            return JSONResponse({"ready": True})
        failed = "the models failed to load (the server's log says why)"
        body = {"ready": False, "error": failed, "detail": failed, "status": 503} if state.error else {"ready": False}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    @app.get("/v1/models", tags=["native"], summary="The loaded models, the modes and the limits.")
    async def models() -> dict[str, Any]:
        ip, _ = state.need()
        return {"clip_models": [shown_model_name(c.name) for c in ip.clips],
                "caption_model": shown_model_name(ip.caption_name) if ip.caption_name else None,
                "modes": list_modes(), "default_mode": "best", "caption_free_modes": caption_free_modes(),
                "max_tokens": SearchSettings().max_tokens,
                "auth": cfg.api_key is not None, "version": __version__,
                "limits": {"max_upload_bytes": cfg.max_upload_bytes, "max_pixels": cfg.max_pixels,
                           "formats": list(cfg.formats), "max_batch_files": cfg.max_batch_files,
                           "max_batch_bytes": cfg.max_batch_bytes,
                           "urls": cfg.allow_urls}}

    @app.get("/v1/stats", tags=["service"], summary="Micro-batching counters since start.")
    async def stats() -> dict[str, Any]:
        _, batcher = state.need()
        return batcher.stats.to_dict() | {"max_batch": batcher.max_batch, "max_queue": batcher.max_queue,
                                           "max_queue_bytes": batcher.max_queue_bytes}

    @app.post("/v1/interrogate", tags=["native"], summary="An image's prompt (and negative prompt).",
              openapi_extra=_body_doc(InterrogateBody, _IMAGE_FORM))
    async def interrogate(request: Request) -> dict[str, Any]:
        fields, data, name = await _parse(request, InterrogateBody)
        ip, batcher = state.need()
        try:
            settings = fields.settings()  # type: ignore[attr-defined]
        except SettingsError as err:
            raise HTTPError(422, str(err)) from None
        image = await _decode(state, data, name)
        caption = fields.caption  # type: ignore[attr-defined]
        result = await _wait(request, lambda: batcher.submit(image, settings, caption=caption, source=name),
                             cfg.timeout)
        return _result_json(ip, result, settings)

    @app.post("/v1/analyze", tags=["native"], summary="The top phrases of every category, with scores.",
              openapi_extra=_body_doc(AnalyzeBody, _ANALYZE_FORM))
    async def analyze(request: Request) -> dict[str, Any]:
        fields, data, name = await _parse(request, AnalyzeBody)
        ip, batcher = state.need()
        image = await _decode(state, data, name)
        top = fields.top  # type: ignore[attr-defined]
        analysis = await _wait(request, lambda: batcher.submit_analyze(image, top, source=name), cfg.timeout)
        out: dict[str, Any] = _public(ip, analysis.to_dict())
        return out

    @app.post("/v1/batch", tags=["native"], summary="Several images (or zips of images): records and downloads.",
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
                  "schema": _BATCH_FORM}}}})
    async def batch(request: Request) -> dict[str, Any]:
        return await _batch(request, state)

    @app.get("/v1/batch/{name}", tags=["native"], summary="A finished batch as .csv, .jsonl or a .zip of captions.")
    async def batch_download(name: str) -> Response:
        stem, _, ext = name.rpartition(".")
        held = state.batches.get(stem)
        if held is None or ext not in ("csv", "jsonl", "zip"):
            raise HTTPError(404, f"no batch download {name!r} (batches are kept for the last {cfg.batch_keep} runs)")
        if ext == "zip":
            body, media = await run_in_threadpool(_sidecar_zip, held), "application/zip"  # tokenizes: off the loop
        else:
            body = records_bytes(held["records"], ext)
            media = "text/csv; charset=utf-8" if ext == "csv" else "application/x-ndjson"
        return Response(body, media_type=media,
                        headers={"Content-Disposition": f'attachment; filename="image2prompt-{stem}.{ext}"'})

    # -- routes of existing clients -----------------------------------------------------------
    @app.get("/interrogator/models", tags=["a1111"], summary="A1111 extension: the CLIP models (arch/tag).")
    async def a1111_models() -> list[str]:
        ip, _ = state.need()
        return [shown_model_name(c.name) for c in ip.clips]

    @app.post("/interrogator/prompt", tags=["a1111"], summary="A1111 extension: an image's prompt.",
              openapi_extra=_json_doc(A1111PromptBody))
    async def a1111_prompt(request: Request) -> dict[str, str]:
        body = await _json(request, A1111PromptBody)
        ip, batcher = state.need()
        _check_clip(ip, body.clip_model_name)
        if body.caption_model_name and ip.caption_name and body.caption_model_name != ip.caption_name:
            log.info("caption_model_name %r asked; this server has %s", body.caption_model_name, ip.caption_name)
        image = await _decode(state, *await run_in_threadpool(_a1111_image, body.image))
        if body.mode == "caption":
            caption = await _wait(request, lambda: batcher.submit_caption(image), cfg.timeout)
            return {"prompt": caption}
        settings = SearchSettings.reference(mode=body.mode)  # the extension's clients expect its prompts
        result = await _wait(request, lambda: batcher.submit(image, settings), cfg.timeout)
        return {"prompt": result.prompt}

    @app.post("/interrogator/analyze", tags=["a1111"], summary="A1111 extension: top 5 labels per category.",
              openapi_extra=_json_doc(A1111AnalyzeBody))
    async def a1111_analyze(request: Request) -> dict[str, dict[str, float]]:
        body = await _json(request, A1111AnalyzeBody)
        ip, batcher = state.need()
        _check_clip(ip, body.clip_model_name)
        image = await _decode(state, *await run_in_threadpool(_a1111_image, body.image))
        analysis = await _wait(request, lambda: batcher.submit_analyze(image, 5), cfg.timeout)
        return {A1111_CATEGORIES.get(c, c): {p.text: p.score for p in phrases}
                for c, phrases in analysis.categories.items()}

    @app.post("/sdapi/v1/interrogate", tags=["a1111"], summary="A1111: interrogate with model 'clip'.",
              openapi_extra=_json_doc(A1111InterrogateBody))
    async def sdapi_interrogate(request: Request) -> dict[str, str]:
        body = await _json(request, A1111InterrogateBody)
        _, batcher = state.need()
        if body.model.strip().lower() != "clip":  # A1111 answers an unknown model with 404 "Model not found"
            raise HTTPError(404, f"Model not found: {body.model!r} is not served here; only 'clip' "
                                 "(deepdanbooru is A1111's own)")
        image = await _decode(state, *await run_in_threadpool(_a1111_image, body.image))
        settings = SearchSettings.reference(mode="classic")  # what A1111's own CLIP interrogator writes
        result = await _wait(request, lambda: batcher.submit(image, settings), cfg.timeout)
        return {"caption": result.prompt}


def _check_clip(ip: Interrogator, name: str | None) -> None:
    if not name:
        return
    loaded = [c.name for c in ip.clips]
    shown = [shown_model_name(n) for n in loaded]
    if name not in shown and name not in loaded and name not in ip.encoder_keys:
        raise HTTPError(422, f"clip_model_name {name!r} is not loaded; this server has {', '.join(shown)} "
                             "(GET /interrogator/models)")


def _a1111_image(text: str) -> tuple[bytes | None, str]:
    """An A1111 request's image: base64 (or a data: URL), or, as A1111 takes it, an http(s) URL
    (fetched only on a server started with --allow-urls, and only from public addresses)."""
    head = text.strip()[:8].lower()
    if head.startswith(("http://", "https://")):
        return None, text.strip()
    return _b64(text), "image"


# --- batch uploads -----------------------------------------------------------------------


async def _batch(request: Request, state: _State) -> dict[str, Any]:
    cfg = state.config
    if _content_type(request) != "multipart/form-data":
        raise HTTPError(415, "send the files as multipart/form-data (field: files)")
    form = await _form(request, max_files=cfg.max_batch_files, max_fields=64)
    raw: dict[str, Any] = {}
    uploads = []
    for key, value in form.multi_items():
        if hasattr(value, "read"):
            uploads.append(value)
        else:
            raw[key] = value
    prefix, suffix = raw.pop("prefix", None) or None, raw.pop("suffix", None) or None
    fields = _validate(SearchFields, raw)
    if not uploads:
        raise HTTPError(422, "invalid request: files: at least one file is required")
    ip, batcher = state.need()
    try:
        settings = fields.settings()
    except SettingsError as err:
        raise HTTPError(422, str(err)) from None
    inputs: list[tuple[str, bytes | None, str | None]] = []  # (name, data, error)
    budget = cfg.max_batch_bytes  # one budget for the whole batch: uploads and what zips unpack to
    for up in uploads:
        data = await up.read()
        name = _upload_name(getattr(up, "filename", None))
        if name.lower().endswith(".zip"):
            members = await run_in_threadpool(_unzip, name, data, cfg, cfg.max_batch_files - len(inputs), budget)
            budget -= sum(len(d) for _, d, _ in members if d is not None)
            inputs.extend(members)
        else:
            budget -= len(data)
            inputs.append((name, data, None))
        if len(inputs) > cfg.max_batch_files:
            raise HTTPError(413, f"more than {cfg.max_batch_files} images in one batch")
        if budget < 0:
            raise HTTPError(413, f"the batch unpacks to more than the {cfg.max_batch_bytes}-byte limit")
    fingerprint = ip.fingerprint(settings)
    limit = asyncio.Semaphore(max(1, batcher.max_batch))

    async def one(name: str, data: bytes | None, error: str | None) -> dict[str, Any]:
        if error is not None or data is None:
            return make_record(name, None, fingerprint, None, error or f"{name}: no data")
        digest = await run_in_threadpool(lambda: hashlib.sha256(data).hexdigest())
        async with limit:
            try:
                image = await _decode(state, data, name)
                result = await _wait_queued(request, lambda: batcher.submit(image, settings, caption=fields.caption,
                                                                            source=name), cfg.timeout)
            except HTTPError as err:
                if err.status in (499, 503, 504) and await request.is_disconnected():
                    raise
                return make_record(name, digest, fingerprint, None, err.message if err.message.startswith(name)
                                   else f"{name}: {err.message}")
            except Exception as err:
                log.error("batch upload: %s failed", name, exc_info=err)
                return make_record(name, digest, fingerprint, None, f"{name}: internal error (the server logged "
                                                                    "the details)")
        return _public(ip, make_record(name, digest, fingerprint, result, None))

    tasks = [asyncio.ensure_future(one(*item)) for item in inputs]
    try:
        records = await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:  # the client went away: nobody reads the rest
            t.cancel()
        raise
    bid = uuid.uuid4().hex[:12]
    fits = None
    if prefix or suffix:  # trigger words stay first and count against the token budget, as in `batch`
        budget = settings.max_tokens - 2  # the budget counts the start and end tokens
        fits = lambda text: ip.count_tokens(text) <= budget
    state.batches[bid] = {"records": records, "prefix": prefix, "suffix": suffix, "fits": fits}
    while len(state.batches) > cfg.batch_keep:
        state.batches.popitem(last=False)
    ok = sum(1 for r in records if r["ok"])
    return {"id": bid, "count": len(records), "ok": ok, "failed": len(records) - ok, "records": records,
            "downloads": {ext: f"/v1/batch/{bid}.{ext}" for ext in ("csv", "jsonl", "zip")}}


async def _wait_queued(request: Request, submit: Callable[[], Future[Any]], timeout: float) -> Any:
    """:func:`_wait`, but a full queue is waited out (a batch upload is one request already admitted)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await _wait(request, submit, max(0.001, deadline - loop.time()))
        except HTTPError as err:
            if err.status != 503 or "queue is full" not in err.message or loop.time() >= deadline:
                raise
            await asyncio.sleep(0.05)


def _unzip(name: str, data: bytes, cfg: ServerConfig, room: int,
           budget: int) -> list[tuple[str, bytes | None, str | None]]:
    """The images of a zip upload, each named ``archive.zip/inner/path.png``. Nothing is unpacked
    when the archive holds more than ``room`` images or claims more than ``budget`` bytes; each
    member is read with the upload limit (a member that lies about its size is cut there)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return [(name, None, f"{name}: not a valid zip file")]
    out: list[tuple[str, bytes | None, str | None]] = []
    # as in a folder: images only (a training set's zip holds its .txt captions too), no hidden files
    members = [m for m in archive.infolist()
               if not m.is_dir() and not _hidden(m.filename) and is_image_filename(m.filename)]
    if len(members) > room:
        raise HTTPError(413, f"{name}: more than {cfg.max_batch_files} images in one batch")
    if sum(m.file_size for m in members) > budget:
        raise HTTPError(413, f"{name}: the batch unpacks to more than the {cfg.max_batch_bytes}-byte limit")
    for m in members:
        inner = "/".join([name] + [p for p in m.filename.replace("\\", "/").split("/") if p not in ("", ".", "..")])
        if m.file_size > cfg.max_upload_bytes:
            out.append((inner, None, f"{inner}: image of {m.file_size} bytes is over the "
                                     f"{cfg.max_upload_bytes}-byte limit"))
            continue
        try:
            with archive.open(m) as fp:
                out.append((inner, fp.read(cfg.max_upload_bytes + 1), None))
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError) as err:
            out.append((inner, None, f"{inner}: cannot be read from the zip ({one_line(err)})"))
    return out


def _hidden(path: str) -> bool:
    parts = PurePosixPath(path.replace("\\", "/")).parts
    return any((p.startswith(".") and p not in (".", "..")) or p == "__MACOSX" for p in parts)


def _sidecar_zip(held: dict[str, Any]) -> bytes:
    """Caption files (.txt, one line, UTF-8) for every ok record, at the image's path."""
    options = SidecarOptions(prefix=held.get("prefix"), suffix=held.get("suffix"))
    buf = io.BytesIO()
    used: set[str] = set()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for record in held["records"]:
            if not record.get("ok"):
                continue
            path = sidecar_path(PurePosixPath(record["source"]).as_posix()).as_posix()
            if path in used:  # two uploads of one name: keep both
                stem, dot, ext = path.rpartition(".")
                k = 2
                while f"{stem}-{k}{dot}{ext}" in used:
                    k += 1
                path = f"{stem}-{k}{dot}{ext}"
            used.add(path)
            z.writestr(path, caption_text(record["result"]["prompt"], options, held.get("fits")) + "\n")
    return buf.getvalue()

