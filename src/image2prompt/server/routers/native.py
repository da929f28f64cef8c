"""The native API: /v1/models, /v1/stats, /v1/interrogate and /v1/analyze."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ... import __version__
from ...catalogue import DEFAULT_MODE
from ...errors import SettingsError
from ...modes import caption_free_modes, list_modes
from ...settings import SearchSettings
from ..errors import HTTPError
from ..inputs import decode_image, parse_body
from ..schemas import ANALYZE_FORM, IMAGE_FORM, AnalyzeBody, InterrogateBody, body_doc
from ..state import State, public, shown_model_name

router = APIRouter()


@router.get("/v1/models", tags=["native"], summary="The loaded models, the modes and the limits.")
async def models(state: State) -> dict[str, Any]:
    ip, _ = state.need()
    cfg = state.config
    return {"clip_models": [shown_model_name(c.name) for c in ip.clips],
            "caption_model": shown_model_name(ip.caption_name) if ip.caption_name else None,
            "caption_prompt": getattr(ip.captioner, "instruction", None),  # what a VLM captioner is asked
            "modes": list_modes(), "default_mode": DEFAULT_MODE, "caption_free_modes": caption_free_modes(),
            "max_tokens": SearchSettings().max_tokens,
            "auth": cfg.api_key is not None, "version": __version__,
            "limits": {"max_upload_bytes": cfg.max_upload_bytes, "max_pixels": cfg.max_pixels,
                       "formats": list(cfg.formats), "max_batch_files": cfg.max_batch_files,
                       "max_batch_bytes": cfg.max_batch_bytes, "urls": cfg.allow_urls}}


@router.get("/v1/stats", tags=["service"], summary="Micro-batching counters since start.")
async def stats(state: State) -> dict[str, Any]:
    _, batcher = state.need()
    return batcher.stats.to_dict() | {"max_batch": batcher.max_batch, "max_queue": batcher.max_queue,
                                       "max_queue_bytes": batcher.max_queue_bytes}


@router.post("/v1/interrogate", tags=["native"], summary="An image's prompt (and negative prompt).",
             openapi_extra=body_doc(InterrogateBody, IMAGE_FORM))
async def interrogate(request: Request, state: State) -> dict[str, Any]:
    fields, data, name = await parse_body(request, InterrogateBody)
    ip, batcher = state.need()
    try:
        settings = fields.settings()
    except SettingsError as err:
        raise HTTPError(422, str(err)) from None
    image = await decode_image(state, data, name)
    result = await state.wait(request, lambda: batcher.submit(image, settings, caption=fields.caption, source=name))
    out: dict[str, Any] = public(ip, result.to_dict())
    out["token_budget"] = settings.max_tokens
    return out


@router.post("/v1/analyze", tags=["native"], summary="The top phrases of every category, with scores.",
             openapi_extra=body_doc(AnalyzeBody, ANALYZE_FORM))
async def analyze(request: Request, state: State) -> dict[str, Any]:
    fields, data, name = await parse_body(request, AnalyzeBody)
    ip, batcher = state.need()
    image = await decode_image(state, data, name)
    analysis = await state.wait(request, lambda: batcher.submit_analyze(image, fields.top, source=name))
    return public(ip, analysis.to_dict())
