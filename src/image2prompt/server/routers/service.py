"""The web UI's page, liveness and readiness."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse

from ..state import State

#: The web UI's files (served under /static; index.html at /).
STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/healthz", tags=["service"], summary="Liveness: the process answers.")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["service"], summary="Readiness: models loaded and tables embedded.")
async def readyz(state: State) -> JSONResponse:
    if state.ready.is_set():
        return JSONResponse({"ready": True})
    failed = "the models failed to load (the server's log says why)"
    body = {"ready": False, "error": failed, "detail": failed, "status": 503} if state.error else {"ready": False}
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
