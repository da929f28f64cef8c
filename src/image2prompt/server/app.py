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
import logging
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..batch.records import make_record, records_bytes
from ..batch.sidecars import SidecarOptions, caption_text, sidecar_path
from ..errors import Image2PromptError, ImageLoadError, SettingsError, one_line
from ..io import load_image
from ..io.images import download_bytes
from ..io.sources import is_image_filename
from ..modes import get_mode, mode_names
from ..service import SERVE_FORMATS, SERVE_MAX_PIXELS, Busy, MicroBatcher, ShuttingDown
from ..settings import DEFAULT_FLOOR, SearchSettings

if TYPE_CHECKING:  # pragma: no cover
    from ..interrogator import Interrogator

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
#: Paths answered without an API key: liveness, readiness, the UI's static page and the API docs.
OPEN_PATHS = ("/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/favicon.ico")
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
    max_pixels: int | None = SERVE_MAX_PIXELS  # decoded RGB is 3 bytes a pixel, held until its batch runs
    decoders: int = 2  # images decoded at once (each may take 3-4 bytes a pixel while it decodes)
    formats: tuple[str, ...] = SERVE_FORMATS
    allow_urls: bool = False  # fetch {"url": ...}; private and loopback addresses are refused even then
    url_timeout: float = 20.0
    cors_origins: tuple[str, ...] = ()
    timeout: float = 300.0  # seconds a request may wait for its result (504 after)
    max_batch: int = 16  # requests per micro-batch (1: micro-batching off)
    max_wait: float = 0.005  # seconds the worker waits to fill a micro-batch
    max_queue: int = 64  # requests waiting; past it: 503 with Retry-After
    retry_after: int = 1  # seconds, in 503 answers
    batch_keep: int = 16  # finished batch uploads kept for download
    loopback_only: bool = False  # bound to loopback: answer only Host: localhost/127.0.0.1/[::1] (DNS rebinding)


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
    floor: Union[float, Literal["off"], None] = Field(
        None, description="Relevance floor (a phrase's margin over its category's median, in standard "
                          "deviations of the image's scores over the whole vocabulary), or \"off\"; "
                          f"omitted or null: the default, {DEFAULT_FLOOR:g}.")

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
    mode: Literal["best", "fast", "classic", "negative", "caption", "turbo", "style"] = "best"


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
    downloads: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(8))

    def __post_init__(self) -> None:
        self.decoding = asyncio.Semaphore(max(1, self.config.decoders))

    def load(self) -> None:
        try:
            ip = self.loader()
            log.info("embedding the vocabulary tables (cached after the first run)")
            ip.prepare()
            self.batcher = MicroBatcher(ip, max_batch=self.config.max_batch, max_wait=self.config.max_wait,
                                        max_queue=self.config.max_queue).start()
            self.interrogator = ip
            self.ready.set()
            log.info("ready: %s%s", ip.clip_name, f" with {ip.caption_name} captions" if ip.caption_name else "")
        except Exception as err:  # noqa: BLE001  the reason is shown by /readyz and logged
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


def create_app(interrogator: Union["Interrogator", Loader], config: ServerConfig | None = None, *,
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

    app = FastAPI(title="image2prompt", version=__version__, lifespan=lifespan,
                  description="Prompt scaffolds for text-to-image models from images: every phrase keeps "
                              "its CLIP score; artist names are hypotheses. See the README.")
    app.state.i2p = state
    _install_errors(app)
    _install_middleware(app, config)
    _routes(app, state)
    return app


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

        async def send_logged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        path = scope.get("path", "")
        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                await refusal(scope, receive, send_logged)
                return
            await self.app(scope, _limited(receive, self.body_limit(path)), send_logged)
        except Exception as err:  # noqa: BLE001  a bug: logged here once, never shown to the client
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
        if self.loopback and _hostname(host) not in LOOPBACK_NAMES:
            # DNS rebinding: a page on evil.example that resolves to 127.0.0.1 sends Host: evil.example
            return _error(421, f"this server answers to localhost only, not to Host {host[:80]!r}")
        origin = headers.get("origin", b"").decode("latin-1")
        if origin and scope.get("method") not in ("GET", "HEAD", "OPTIONS") and origin not in self.origins \
                and _hostport(origin) != host:
            # a page of another site POSTing a form here (no CORS preflight for multipart): refused
            return _error(403, f"requests from pages on {origin[:80]} are not allowed (see --cors-origin)")
        if self.key is not None and scope.get("method") != "OPTIONS" and path not in OPEN_PATHS \
                and not path.startswith("/static/"):
            given = headers.get("x-api-key", b"")
            auth = headers.get("authorization", b"")
            if not given and auth[:7].lower() == b"bearer ":
                given = auth[7:].strip()
            if not hmac.compare_digest(given, self.key):
                return _error(401, "an API key is needed: send it as X-API-Key or Authorization: Bearer",
                              {"WWW-Authenticate": "Bearer"})
        declared = headers.get("content-length", b"")
        limit = self.body_limit(path)
        if declared.isdigit() and int(declared) > limit:
            return _error(413, f"request body of {int(declared)} bytes is over the {limit}-byte limit")
        return None


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


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


def _limited(receive: Any, limit: int) -> Any:
    seen = [0]

    async def wrapped() -> dict[str, Any]:
        message: dict[str, Any] = await receive()
        if message.get("type") == "http.request":
            seen[0] += len(message.get("body", b""))
            if seen[0] > limit:
                raise _BodyTooLarge(limit)
        return message

    return wrapped


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message), "status": status}, status_code=status, headers=headers)


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

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)
        return _error(500, "internal error (the server logged the details)")


def _validation_message(errors: Any) -> str:
    parts = []
    for e in errors:
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body",)) or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _image_error(err: ImageLoadError) -> HTTPError:
    status = {"too_large": 413, "format": 415, "refused": 400}.get(err.kind, 400)
    return HTTPError(status, str(err))


# --- reading inputs -------------------------------------------------------------------------


async def _parse(request: Request, model: type[BaseModel]) -> tuple[BaseModel, bytes | None, str]:
    """The request's fields (validated by ``model``) and its image bytes, from JSON or a multipart
    form; returns (fields, image bytes or None when a URL was given, a display name)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=64)
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
        return fields, data, upload.filename or "upload"
    if ctype in ("application/json", ""):
        fields = await _json(request, model)
        image, url = getattr(fields, "image", None), getattr(fields, "url", None)
        if image and url:
            raise HTTPError(422, "invalid request: give image or url, not both")
        if image:
            return fields, _b64(image), "image"
        if url:
            return fields, None, url
        raise HTTPError(422, "invalid request: image: a base64 image (or a url) is required")
    raise HTTPError(415, f"content type {ctype!r} is not accepted: send JSON or multipart/form-data")


async def _json(request: Request, model: type[BaseModel]) -> Any:
    """A JSON body validated by ``model`` (read here, so the body limit answers 413, not 400)."""
    try:
        payload = await request.json()
    except ValueError:
        raise HTTPError(400, "the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise HTTPError(422, "invalid request: the JSON body must be an object")
    return _validate(model, payload)


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
        async with state.decoding:
            return await run_in_threadpool(_load, data, name, cfg)
    except ImageLoadError as err:
        raise _image_error(err) from None


def _load(data: bytes, name: str, cfg: ServerConfig) -> Any:
    from ..io import ImageSource

    return load_image(ImageSource(name, "bytes", data), max_pixels=cfg.max_pixels, formats=cfg.formats)


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


def _result_json(result: Any, settings: SearchSettings) -> dict[str, Any]:
    data: dict[str, Any] = result.to_dict()
    data["token_budget"] = settings.max_tokens
    return data


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
        body = {"ready": False, "error": "the models failed to load (the server's log says why)"} \
            if state.error else {"ready": False}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    @app.get("/v1/models", tags=["native"], summary="The loaded models, the modes and the limits.")
    async def models() -> dict[str, Any]:
        ip, _ = state.need()
        return {"clip_models": [c.name for c in ip.clips], "caption_model": ip.caption_name,
                "modes": mode_names(), "default_mode": "best", "max_tokens": SearchSettings().max_tokens,
                "auth": cfg.api_key is not None, "version": __version__,
                "limits": {"max_upload_bytes": cfg.max_upload_bytes, "max_pixels": cfg.max_pixels,
                           "formats": list(cfg.formats), "max_batch_files": cfg.max_batch_files,
                           "max_batch_bytes": cfg.max_batch_bytes,
                           "urls": cfg.allow_urls}}

    @app.get("/v1/stats", tags=["service"], summary="Micro-batching counters since start.")
    async def stats() -> dict[str, Any]:
        _, batcher = state.need()
        return batcher.stats.to_dict() | {"max_batch": batcher.max_batch, "max_queue": batcher.max_queue}

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
        return _result_json(result, settings)

    @app.post("/v1/analyze", tags=["native"], summary="The top phrases of every category, with scores.",
              openapi_extra=_body_doc(AnalyzeBody, _ANALYZE_FORM))
    async def analyze(request: Request) -> dict[str, Any]:
        fields, data, name = await _parse(request, AnalyzeBody)
        _, batcher = state.need()
        image = await _decode(state, data, name)
        top = fields.top  # type: ignore[attr-defined]
        analysis = await _wait(request, lambda: batcher.submit_analyze(image, top, source=name), cfg.timeout)
        out: dict[str, Any] = analysis.to_dict()
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
            body, media = _sidecar_zip(held), "application/zip"
        else:
            body = records_bytes(held["records"], ext)
            media = "text/csv; charset=utf-8" if ext == "csv" else "application/x-ndjson"
        return Response(body, media_type=media,
                        headers={"Content-Disposition": f'attachment; filename="image2prompt-{stem}.{ext}"'})

    # -- routes of existing clients -----------------------------------------------------------
    @app.get("/interrogator/models", tags=["a1111"], summary="A1111 extension: the CLIP models (arch/tag).")
    async def a1111_models() -> list[str]:
        ip, _ = state.need()
        return [c.name for c in ip.clips]

    @app.post("/interrogator/prompt", tags=["a1111"], summary="A1111 extension: an image's prompt.",
              openapi_extra=_json_doc(A1111PromptBody))
    async def a1111_prompt(request: Request) -> dict[str, str]:
        body = await _json(request, A1111PromptBody)
        ip, batcher = state.need()
        _check_clip(ip, body.clip_model_name)
        if body.caption_model_name and ip.caption_name and body.caption_model_name != ip.caption_name:
            log.info("caption_model_name %r asked; this server has %s", body.caption_model_name, ip.caption_name)
        image = await _decode(state, _b64(body.image), "image")
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
        image = await _decode(state, _b64(body.image), "image")
        analysis = await _wait(request, lambda: batcher.submit_analyze(image, 5), cfg.timeout)
        return {A1111_CATEGORIES.get(c, c): {p.text: p.score for p in phrases}
                for c, phrases in analysis.categories.items()}

    @app.post("/sdapi/v1/interrogate", tags=["a1111"], summary="A1111: interrogate with model 'clip'.",
              openapi_extra=_json_doc(A1111InterrogateBody))
    async def sdapi_interrogate(request: Request) -> dict[str, str]:
        body = await _json(request, A1111InterrogateBody)
        _, batcher = state.need()
        if body.model.strip().lower() != "clip":
            raise HTTPError(422, f"model {body.model!r} is not served here; only 'clip' (deepdanbooru is A1111's own)")
        image = await _decode(state, _b64(body.image), "image")
        settings = SearchSettings.reference(mode="classic")  # what A1111's own CLIP interrogator writes
        result = await _wait(request, lambda: batcher.submit(image, settings), cfg.timeout)
        return {"caption": result.prompt}


def _check_clip(ip: Interrogator, name: str | None) -> None:
    if not name:
        return
    loaded = [c.name for c in ip.clips]
    if name not in loaded and name not in ip.encoder_keys:
        raise HTTPError(422, f"clip_model_name {name!r} is not loaded; this server has {', '.join(loaded)} "
                             "(GET /interrogator/models)")


# --- batch uploads -----------------------------------------------------------------------


async def _batch(request: Request, state: _State) -> dict[str, Any]:
    cfg = state.config
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raise HTTPError(415, "send the files as multipart/form-data (field: files)")
    form = await request.form(max_files=cfg.max_batch_files, max_fields=64)
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
        name = PurePosixPath((up.filename or "upload").replace("\\", "/")).name or "upload"
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
            except Exception as err:  # noqa: BLE001  a bug or the model failing: this image's record says so
                log.error("batch upload: %s failed", name, exc_info=err)
                return make_record(name, digest, fingerprint, None, f"{name}: internal error (the server logged "
                                                                    "the details)")
        return make_record(name, digest, fingerprint, result, None)

    tasks = [asyncio.ensure_future(one(*item)) for item in inputs]
    try:
        records = await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:  # the client went away: nobody reads the rest
            t.cancel()
        raise
    bid = uuid.uuid4().hex[:12]
    state.batches[bid] = {"records": records, "prefix": prefix, "suffix": suffix}
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
            z.writestr(path, caption_text(record["result"]["prompt"], options) + "\n")
    return buf.getvalue()

