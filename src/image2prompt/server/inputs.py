"""Reading a request's inputs: its fields (JSON or a multipart form, validated by a schema) and its image
(base64, an upload or, where allowed, a URL), decoded in worker threads within the server's limits."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import PurePosixPath
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ..errors import ImageLoadError
from ..io import ImageSource, load_image
from ..io.download import download_bytes
from ..io.images import input_side_of
from ..prompt.caption import is_invisible
from .errors import HTTPError, image_error, validation_message
from .state import ServerState


async def parse_body(request: Request, model: type[BaseModel]) -> tuple[Any, bytes | None, str]:
    """The request's fields (validated by ``model``) and its image bytes, from JSON or a multipart
    form; returns (fields, image bytes or None when a URL was given, a display name)."""
    ctype = content_type(request)
    if ctype == "multipart/form-data":
        raw, files = await read_form(request, max_files=1)
        for key, _ in files:
            if key != "image":
                raise HTTPError(422, f"invalid request: {key}: only the image field may be a file")
        if not files:
            raise HTTPError(422, "invalid request: image: a file field named image is required")
        fields = validate(model, raw)
        upload = files[0][1]
        return fields, await upload.read(), upload_name(upload.filename)
    if ctype in ("application/json", ""):
        fields = await read_json(request, model)
        image, url = getattr(fields, "image", None), getattr(fields, "url", None)
        if image and url:
            raise HTTPError(422, "invalid request: give image or url, not both")
        if image:
            return fields, await run_in_threadpool(b64, image), "image"  # off the loop: up to ~27 MB
        if url:
            return fields, None, url
        raise HTTPError(422, "invalid request: image: a base64 image (or a url) is required")
    raise HTTPError(415, f"content type {ctype!r} is not accepted: send JSON or multipart/form-data")


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


class MultiPart(MultiPartParser):
    """Starlette's multipart parser, noting whether the closing boundary came (python-multipart
    takes a body that stops short as if it had ended, dropping the part it was in)."""

    complete = False

    def on_end(self) -> None:
        self.complete = True


async def read_form(request: Request, *, max_files: int) -> tuple[dict[str, str], list[tuple[str, UploadFile]]]:
    """A multipart form's fields and its files, refused (400) when it is malformed or ends before its
    closing boundary."""
    try:
        parser = MultiPart(request.headers, request.stream(), max_files=max_files, max_fields=64)
        form = await parser.parse()
    except MultiPartException as err:
        raise HTTPError(400, f"invalid multipart body: {err.message}") from None
    if not parser.complete:
        await form.close()
        raise HTTPError(400, "invalid multipart body: it ends before its closing boundary (a cut-off upload?)")
    files = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
    return {key: value for key, value in form.multi_items() if isinstance(value, str)}, files


def upload_name(filename: str | None) -> str:
    """What an uploaded file is called in answers and records: its base name (no folders, no
    ``..``), without control or format characters (NUL, CR, LF, bidirectional overrides)."""
    base = PurePosixPath((filename or "").replace("\\", "/")).name
    base = "".join(c for c in base if not is_invisible(c)).strip()[:255]
    return base if base not in ("", ".", "..") else "upload"


def loads_json(body: bytes, model: type[BaseModel]) -> Any:
    """Parse and validate a JSON body (run off the event loop: a large body takes seconds)."""
    try:
        payload = json.loads(body)
        if not isinstance(payload, dict):
            raise HTTPError(422, "invalid request: the JSON body must be an object")
        return validate(model, payload)  # raises HTTPError, not a ValueError, for an invalid body
    except RecursionError:
        raise HTTPError(400, "the body is not valid JSON: nested too deeply") from None
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise HTTPError(400, "the body is not valid JSON") from None


async def read_json(request: Request, model: type[BaseModel]) -> Any:
    """A JSON body validated by ``model`` (read here, so the body limit answers 413, not 400);
    parsed in a worker thread, so a large body does not stall every other request."""
    ctype = content_type(request)
    if ctype not in ("application/json", "") and not ctype.endswith("+json"):
        raise HTTPError(415, f"content type {ctype!r} is not accepted here: send JSON (application/json)")
    body = await request.body()
    return await run_in_threadpool(loads_json, body, model)


def validate(model: type[BaseModel], raw: dict[str, Any]) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise HTTPError(422, validation_message(err.errors())) from None


def b64(text: str) -> bytes:
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


async def decode_image(state: ServerState, data: bytes | None, name: str) -> Any:
    """An image from its bytes, or fetched from the URL ``name`` when ``data`` is None (where the
    server allows URLs), decoded in a worker thread within the server's limits."""
    cfg = state.config

    def load(data: bytes) -> Any:
        # Reduced right after decoding to what the loaded models need, so no waiting request holds
        # a full-size image; the decoding thread itself holds one of config.decoders slots (the
        # asyncio semaphore alone is given back when a request is cancelled mid-decode).
        with state.decode_slots.hold(data):
            return load_image(ImageSource(name, "bytes", data), max_pixels=cfg.max_pixels, formats=cfg.formats,
                              reduce_to=input_side_of(state.interrogator))

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
            return await run_in_threadpool(load, data)
    except ImageLoadError as err:
        raise image_error(err) from None
