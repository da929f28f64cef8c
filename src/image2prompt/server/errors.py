"""Errors as HTTP answers: every error is a real status with a JSON body
``{"error": "...", "detail": "...", "status": N}``; a traceback never reaches a client (it is logged here)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import RAISE_MAX_PIXELS, ImageLoadError, one_line

log = logging.getLogger(__name__)


class HTTPError(Exception):
    """An error answer: status and one-line message (and extra headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, one_line(message), headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The error body: ``error`` and ``status``, and ``detail`` (FastAPI's and A1111's key, which
    their clients read) with the same message."""
    text = one_line(message)
    return JSONResponse({"error": text, "detail": text, "status": status}, status_code=status, headers=headers)


def image_error(err: ImageLoadError) -> HTTPError:
    """An image that cannot be loaded, with the library's advice in the server's words (its own setting's name)."""
    status = {"too_large": 413, "format": 415, "refused": 400}.get(err.kind, 400)
    return HTTPError(status, str(err).replace(RAISE_MAX_PIXELS, "the server's limit, set with serve --max-pixels"))


def validation_message(errors: Any, shown: int = 10) -> str:
    """The first ``shown`` problems (a body with a million unknown keys has a million)."""
    parts = []
    for e in errors[:shown]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body",))[:100] or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    count = f"{len(errors)} problems, the first {shown}: " if len(errors) > shown else ""
    return "invalid request: " + count + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, err: HTTPError) -> JSONResponse:
        return error_response(err.status, err.message, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(err.status_code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_message(err.errors()))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, err: ClientDisconnect) -> JSONResponse:
        # the client closed the connection before its body was complete: logged as 499 (nobody reads this)
        return error_response(499, "client closed the request")

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)
        return error_response(500, "internal error (the server logged the details)")
