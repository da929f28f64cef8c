"""The FastAPI application of ``image2prompt serve``, with the web UI's page, liveness, readiness and API docs.

Thin over the library: images are decoded by :func:`image2prompt.io.load_image` in worker threads
(:mod:`.inputs`), searched through one :class:`~image2prompt.service.MicroBatcher` (:mod:`.state`) and
answered with the library's own ``Result``/``Analysis`` dictionaries by the routers under :mod:`.routers`.
Every error is a JSON answer with a real status (:mod:`.errors`); :mod:`.guard` logs and limits each request.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .. import __version__
from .errors import install_error_handlers
from .guard import DOCS_ASSETS, Guard
from .routers import a1111, batch, native
from .state import Loader, ServerConfig, ServerState, State

if TYPE_CHECKING:  # pragma: no cover
    from ..interrogator import Interrogator

__all__ = ["STATIC", "ServerConfig", "create_app"]

#: The web UI's files (served under /static; index.html at /).
STATIC = Path(__file__).resolve().parent / "static"

service = APIRouter()


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
    _install_docs(app)
    install_error_handlers(app)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    app.add_middleware(Guard, config=config)  # outermost: log, limit and authenticate every request
    app.include_router(service)
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for module in (native, batch, a1111):
        app.include_router(module.router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the models in a thread (the server answers meanwhile); close the batcher at shutdown."""
    state: ServerState = app.state.i2p
    threading.Thread(target=state.load, name="image2prompt-load", daemon=True).start()
    yield
    if state.batcher is not None:
        await run_in_threadpool(state.batcher.close)


def _install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their scripts served from here (the copies the
    fastapi-offline package ships), not from a CDN: the pages work on a machine with no internet."""
    try:
        import fastapi_offline
    except ImportError:  # an install without the serve extra's fastapi-offline: the CDN's copies
        swagger_assets: dict[str, str] = {}
        redoc_assets: dict[str, str] = {}
    else:
        assets = Path(fastapi_offline.__file__).resolve().parent / "static"
        app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")
        swagger_assets = {"swagger_js_url": f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                          "swagger_css_url": f"{DOCS_ASSETS}/swagger-ui.css",
                          "swagger_favicon_url": f"{DOCS_ASSETS}/favicon.png"}
        redoc_assets = {"redoc_js_url": f"{DOCS_ASSETS}/redoc.standalone.js",
                        "redoc_favicon_url": f"{DOCS_ASSETS}/favicon.png"}

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=f"{app.title} - API docs",
                                   oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
                                   **{k: root + v for k, v in swagger_assets.items()})

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc_page(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=f"{root}/openapi.json", title=f"{app.title} - API docs",
                              with_google_fonts=False, **{k: root + v for k, v in redoc_assets.items()})


@service.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@service.get("/healthz", tags=["service"], summary="Liveness: the process answers.")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@service.get("/readyz", tags=["service"], summary="Readiness: models loaded and tables embedded.")
async def readyz(state: State) -> JSONResponse:
    if state.ready.is_set():
        return JSONResponse({"ready": True})
    failed = "the models failed to load (the server's log says why)"
    body = {"ready": False, "error": failed, "detail": failed, "status": 503} if state.error else {"ready": False}
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
