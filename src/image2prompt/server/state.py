"""What the server is told (:class:`ServerConfig`) and what it holds while it runs (:class:`ServerState`:
the interrogator, its :class:`~image2prompt.service.MicroBatcher`, the finished batch uploads)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from ..errors import Image2PromptError, one_line
from ..io.images import DecodeSlots
from ..service import DEFAULT_QUEUE_BYTES, SERVE_FORMATS, SERVE_MAX_PIXELS, MicroBatcher
from .errors import HTTPError

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


def server_state(request: Request) -> ServerState:
    """The application's :class:`ServerState` (a dependency of every route that needs it)."""
    state: ServerState = request.app.state.i2p
    return state


#: A route parameter typed ``State`` is given the application's :class:`ServerState`.
State = Annotated[ServerState, Depends(server_state)]
