"""The routes of A1111's clients: the clip-interrogator extension's /interrogator/* and A1111's own
/sdapi/v1/interrogate, with their request and answer shapes."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ...io.sources import is_url
from ...settings import SearchSettings
from ..errors import HTTPError
from ..inputs import b64, decode_image, read_json
from ..schemas import A1111AnalyzeBody, A1111InterrogateBody, A1111PromptBody, body_doc
from ..state import State, shown_model_name

if TYPE_CHECKING:  # pragma: no cover
    from ...interrogator import Interrogator

log = logging.getLogger(__name__)

#: A1111 category names of the reference's tables, for /interrogator/analyze.
A1111_CATEGORIES = {"mediums": "medium", "artists": "artist", "movements": "movement", "trendings": "trending",
                    "flavors": "flavor"}

router = APIRouter()


@router.get("/interrogator/models", tags=["a1111"], summary="A1111 extension: the CLIP models (arch/tag).")
async def a1111_models(state: State) -> list[str]:
    ip, _ = state.need()
    return [shown_model_name(c.name) for c in ip.clips]


@router.post("/interrogator/prompt", tags=["a1111"], summary="A1111 extension: an image's prompt.",
             openapi_extra=body_doc(A1111PromptBody))
async def a1111_prompt(request: Request, state: State) -> dict[str, str]:
    body = await read_json(request, A1111PromptBody)
    ip, batcher = state.need()
    check_clip(ip, body.clip_model_name)
    if body.caption_model_name and ip.caption_name and body.caption_model_name != ip.caption_name:
        log.info("caption_model_name %r asked; this server has %s", body.caption_model_name, ip.caption_name)
    image = await decode_image(state, *await run_in_threadpool(a1111_image, body.image))
    if body.mode == "caption":
        return {"prompt": await state.wait(request, lambda: batcher.submit_caption(image))}
    settings = SearchSettings.reference(mode=body.mode)  # the extension's clients expect its prompts
    result = await state.wait(request, lambda: batcher.submit(image, settings))
    return {"prompt": result.prompt}


@router.post("/interrogator/analyze", tags=["a1111"], summary="A1111 extension: top 5 labels per category.",
             openapi_extra=body_doc(A1111AnalyzeBody))
async def a1111_analyze(request: Request, state: State) -> dict[str, dict[str, float]]:
    body = await read_json(request, A1111AnalyzeBody)
    ip, batcher = state.need()
    check_clip(ip, body.clip_model_name)
    image = await decode_image(state, *await run_in_threadpool(a1111_image, body.image))
    analysis = await state.wait(request, lambda: batcher.submit_analyze(image, 5))
    return {A1111_CATEGORIES.get(c, c): {p.text: p.score for p in phrases}
            for c, phrases in analysis.categories.items()}


@router.post("/sdapi/v1/interrogate", tags=["a1111"], summary="A1111: interrogate with model 'clip'.",
             openapi_extra=body_doc(A1111InterrogateBody))
async def sdapi_interrogate(request: Request, state: State) -> dict[str, str]:
    body = await read_json(request, A1111InterrogateBody)
    _, batcher = state.need()
    if body.model.strip().lower() != "clip":  # A1111 answers an unknown model with 404 "Model not found"
        raise HTTPError(404, f"Model not found: {body.model!r} is not served here; only 'clip' "
                             "(deepdanbooru is A1111's own)")
    image = await decode_image(state, *await run_in_threadpool(a1111_image, body.image))
    settings = SearchSettings.reference(mode="classic")  # what A1111's own CLIP interrogator writes
    result = await state.wait(request, lambda: batcher.submit(image, settings))
    return {"caption": result.prompt}


def check_clip(ip: Interrogator, name: str | None) -> None:
    if not name:
        return
    loaded = [c.name for c in ip.clips]
    shown = [shown_model_name(n) for n in loaded]
    if name not in shown and name not in loaded and name not in ip.encoder_keys:
        raise HTTPError(422, f"clip_model_name {name!r} is not loaded; this server has {', '.join(shown)} "
                             "(GET /interrogator/models)")


def a1111_image(text: str) -> tuple[bytes | None, str]:
    """An A1111 request's image: base64 (or a data: URL), or, as A1111 takes it, an http(s) URL
    (fetched only on a server started with --allow-urls, and only from public addresses)."""
    return (None, text.strip()) if is_url(text.strip()) else (b64(text), "image")
