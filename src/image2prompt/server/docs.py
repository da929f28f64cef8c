"""/docs (Swagger UI) and /redoc, with their scripts served by the server itself."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles

from .guard import DOCS_ASSETS


def install_docs(app: FastAPI) -> None:
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
