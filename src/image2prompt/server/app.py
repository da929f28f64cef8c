"""The FastAPI application of ``image2prompt serve``.

Thin over the library: images are decoded by :func:`image2prompt.io.load_image` (in
worker threads, with the upload, pixel and format limits), searched through one
:class:`~image2prompt.service.MicroBatcher`, and answered with the library's own
``Result``/``Analysis`` dictionaries. Batch uploads become the same records as
``image2prompt batch`` (:func:`image2prompt.batch.records.make_record`) and the same
caption files (:mod:`image2prompt.batch.sidecars`).

Every error is a real HTTP status with a JSON body ``{"error": "...", "status": N}``;
a traceback never reaches a client (it is logged). One log line per request.

The parts, as in FastAPI's "bigger applications": :mod:`.state` (the config and what the
server holds), :mod:`.guard` (the middleware), :mod:`.errors` (errors as HTTP answers),
:mod:`.schemas` (request bodies), :mod:`.inputs` (reading and decoding a request's image),
:mod:`.waiting` (waiting for the model worker), :mod:`.docs` (the API docs pages) and the
routers under :mod:`.routers`.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .. import __version__
from .docs import install_docs
from .errors import install_error_handlers
from .guard import install_middleware
from .routers import a1111, batch, native, service
from .routers.service import STATIC
from .state import Loader, ServerConfig, ServerState

if TYPE_CHECKING:  # pragma: no cover
    from ..interrogator import Interrogator

__all__ = ["STATIC", "ServerConfig", "create_app"]


def create_app(interrogator: Interrogator | Loader, config: ServerConfig | None = None, *,
               on_load_error: Callable[[str], None] | None = None) -> FastAPI:
    """The application over a loaded interrogator, or a function that loads one (then called
    in a thread at start-up, so /healthz answers at once and /readyz once it is done)."""
    config = config or ServerConfig()
    loader: Loader = interrogator if callable(interrogator) and not hasattr(interrogator, "encode") \
        else (lambda: interrogator)  # type: ignore[assignment,return-value]
    app = FastAPI(title="image2prompt", version=__version__, lifespan=_lifespan, docs_url=None, redoc_url=None,
                  description="Prompt scaffolds for text-to-image models from images: every phrase keeps "
                              "its CLIP score; artist names are hypotheses. See the README.")
    app.state.i2p = ServerState(config, loader, on_load_error=on_load_error)
    install_docs(app)
    install_error_handlers(app)
    install_middleware(app, config)
    app.include_router(service.router)
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(native.router)
    app.include_router(batch.router)
    app.include_router(a1111.router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the models in a thread (the server answers meanwhile); close the batcher at shutdown."""
    state: ServerState = app.state.i2p
    thread = threading.Thread(target=state.load, name="image2prompt-load", daemon=True)
    thread.start()
    yield
    if state.batcher is not None:
        await run_in_threadpool(state.batcher.close)
