"""What the server is told (:class:`ServerConfig`) and what it holds while it runs (:class:`ServerState`:
the interrogator, its :class:`~image2prompt.service.MicroBatcher`, the finished batch uploads); waiting
for the model worker within a request's timeout; and the models' names as clients see them."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from ..catalogue import LOCAL_DIR  # the scheme of a local model folder
from ..errors import Image2PromptError, ImageLoadError, SettingsError, one_line
from ..io.images import DecodeSlots
from ..service import DEFAULT_QUEUE_BYTES, SERVE_FORMATS, SERVE_MAX_PIXELS, Busy, MicroBatcher, ShuttingDown
from .errors import HTTPError, image_error

if TYPE_CHECKING:  # pragma: no cover
    from ..interrogator import Interrogator

log = logging.getLogger(__name__)

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


@dataclass
class ServerState:
    """The running server's state, at ``app.state.i2p`` (routes get it through :data:`State`)."""

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

    async def wait(self, request: Request, submit: Callable[[], Future[Any]], timeout: float | None = None) -> Any:
        """Submit to the batcher and wait (``timeout``, default the config's); a timeout (504) or a
        client gone cancels the work if it has not started."""
        timeout = self.config.timeout if timeout is None else timeout
        try:
            fut = submit()
        except Busy as err:
            raise HTTPError(503, str(err), {"Retry-After": str(self.config.retry_after)}) from None
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
            raise image_error(err) from None
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

    async def wait_queued(self, request: Request, submit: Callable[[], Future[Any]]) -> Any:
        """:meth:`wait`, but a full queue is waited out (a batch upload is one request already admitted)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout
        while True:
            try:
                return await self.wait(request, submit, max(0.001, deadline - loop.time()))
            except HTTPError as err:
                if err.status != 503 or "queue is full" not in err.message or loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.05)


def _retrieve(fut: Any) -> None:
    """Read an abandoned future's outcome so asyncio does not log it as never retrieved."""
    if not fut.cancelled():
        fut.exception()


def server_state(request: Request) -> ServerState:
    return request.app.state.i2p


#: A route parameter typed ``State`` is given the application's :class:`ServerState`.
State = Annotated[ServerState, Depends(server_state)]


def shown_model_name(name: str) -> str:
    """A model's name as clients see it: a folder on the server by its base name
    (``local-dir:/srv/models/my-clip`` -> ``local-dir:my-clip``), so the server's paths stay in its log."""
    # a captioner may be given a bare folder
    if not name.startswith((LOCAL_DIR, "/", "~", "./", "../", "\\")) and name[1:3] not in (":/", ":\\"):
        return name  # ARCH/TAG, hf-hub:ORG/REPO, a short captioner name: no path in it
    base = name.removeprefix(LOCAL_DIR).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return LOCAL_DIR + (base or "model")


def public(ip: Interrogator, data: Any) -> Any:
    """A result's or analysis's dictionary with the models' shown names (also in nested results)."""
    if isinstance(data, list):
        return [public(ip, v) for v in data]
    if not isinstance(data, dict):
        return data
    out = {}
    for key, value in data.items():
        if key in ("clip_model", "caption_model") and isinstance(value, str):
            names = [c.name for c in ip.clips] + ([ip.caption_name] if ip.caption_name else [])
            for real in sorted(names, key=len, reverse=True):  # longest first: replaced inside joined names
                value = value.replace(real, shown_model_name(real))
        elif isinstance(value, (dict, list)) and key in ("negative", "result"):
            value = public(ip, value)
        out[key] = value
    return out
