"""Batch uploads: several images (or zips of images) in one multipart request, answered with the same records
as ``image2prompt batch`` (:func:`image2prompt.batch.records.make_record`) and kept for download as .csv, .jsonl
or a .zip of caption files (:mod:`image2prompt.batch.sidecars`). Each image goes through the server's one
:class:`~image2prompt.service.MicroBatcher`, like every other request's."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import uuid
import zipfile
from pathlib import PurePosixPath
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ...batch.records import make_record, records_bytes
from ...batch.sidecars import SidecarOptions, caption_text, sidecar_path
from ...errors import SettingsError, one_line
from ...io.sources import is_image_filename
from ..errors import HTTPError
from ..inputs import content_type, decode_image, read_form, upload_name, validate
from ..schemas import BATCH_FORM, SearchFields, body_doc
from ..state import ServerConfig, State, public

log = logging.getLogger(__name__)

router = APIRouter()


@router.post("/v1/batch", tags=["native"], summary="Several images (or zips of images): records and downloads.",
             openapi_extra=body_doc(None, BATCH_FORM))
async def batch(request: Request, state: State) -> dict[str, Any]:
    cfg = state.config
    if content_type(request) != "multipart/form-data":
        raise HTTPError(415, "send the files as multipart/form-data (field: files)")
    raw, files = await read_form(request, max_files=cfg.max_batch_files)
    prefix, suffix = raw.pop("prefix", None) or None, raw.pop("suffix", None) or None
    fields = validate(SearchFields, raw)
    if not files:
        raise HTTPError(422, "invalid request: files: at least one file is required")
    ip, batcher = state.need()
    try:
        settings = fields.settings()
    except SettingsError as err:
        raise HTTPError(422, str(err)) from None
    inputs: list[tuple[str, bytes | None, str | None]] = []  # (name, data, error)
    budget = cfg.max_batch_bytes  # one budget for the whole batch: uploads and what zips unpack to
    for _, up in files:
        data = await up.read()
        name = upload_name(up.filename)
        if name.lower().endswith(".zip"):
            members = await run_in_threadpool(unzip, name, data, cfg, cfg.max_batch_files - len(inputs), budget)
            budget -= sum(len(d) for _, d, _ in members if d is not None)
            inputs.extend(members)
        else:
            budget -= len(data)
            inputs.append((name, data, None))
        if len(inputs) > cfg.max_batch_files:
            raise HTTPError(413, f"more than {cfg.max_batch_files} images in one batch")
        if budget < 0:
            raise HTTPError(413, f"the batch unpacks to more than the {cfg.max_batch_bytes}-byte limit")
    fingerprint = ip.fingerprint(settings)
    limit = asyncio.Semaphore(max(1, batcher.max_batch))

    async def one(name: str, data: bytes | None, error: str | None) -> dict[str, Any]:
        if error is not None or data is None:
            return make_record(name, None, fingerprint, None, error or f"{name}: no data")
        digest = await run_in_threadpool(lambda: hashlib.sha256(data).hexdigest())
        async with limit:
            try:
                image = await decode_image(state, data, name)
                result = await state.wait_queued(
                    request, lambda: batcher.submit(image, settings, caption=fields.caption, source=name))
            except HTTPError as err:
                if err.status in (499, 503, 504) and await request.is_disconnected():
                    raise
                return make_record(name, digest, fingerprint, None, err.message if err.message.startswith(name)
                                   else f"{name}: {err.message}")
            except Exception as err:
                log.error("batch upload: %s failed", name, exc_info=err)
                return make_record(name, digest, fingerprint, None, f"{name}: internal error (the server logged "
                                                                    "the details)")
        return public(ip, make_record(name, digest, fingerprint, result, None))

    tasks = [asyncio.ensure_future(one(*item)) for item in inputs]
    try:
        records = await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:  # the client went away: nobody reads the rest
            t.cancel()
        raise
    bid = uuid.uuid4().hex[:12]
    fits = None
    if prefix or suffix:  # trigger words stay first and count against the token budget, as in `batch`
        budget = settings.max_tokens - 2  # the budget counts the start and end tokens
        fits = lambda text: ip.count_tokens(text) <= budget
    state.batches[bid] = {"records": records, "prefix": prefix, "suffix": suffix, "fits": fits}
    while len(state.batches) > cfg.batch_keep:
        state.batches.popitem(last=False)
    ok = sum(1 for r in records if r["ok"])
    return {"id": bid, "count": len(records), "ok": ok, "failed": len(records) - ok, "records": records,
            "downloads": {ext: f"/v1/batch/{bid}.{ext}" for ext in ("csv", "jsonl", "zip")}}


@router.get("/v1/batch/{name}", tags=["native"], summary="A finished batch as .csv, .jsonl or a .zip of captions.")
async def batch_download(name: str, state: State) -> Response:
    stem, _, ext = name.rpartition(".")
    held = state.batches.get(stem)
    if held is None or ext not in ("csv", "jsonl", "zip"):
        raise HTTPError(404, f"no batch download {name!r} (batches are kept for the last "
                             f"{state.config.batch_keep} runs)")
    if ext == "zip":
        body, media = await run_in_threadpool(sidecar_zip, held), "application/zip"  # tokenizes: off the loop
    else:
        body = records_bytes(held["records"], ext)
        media = "text/csv; charset=utf-8" if ext == "csv" else "application/x-ndjson"
    return Response(body, media_type=media,
                    headers={"Content-Disposition": f'attachment; filename="image2prompt-{stem}.{ext}"'})


def unzip(name: str, data: bytes, cfg: ServerConfig, room: int,
           budget: int) -> list[tuple[str, bytes | None, str | None]]:
    """The images of a zip upload, each named ``archive.zip/inner/path.png``. Nothing is unpacked when the archive
    holds more than ``room`` images or claims more than ``budget`` bytes; each member is read with the upload
    limit (a member that lies about its size is cut there)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return [(name, None, f"{name}: not a valid zip file")]
    out: list[tuple[str, bytes | None, str | None]] = []
    # as in a folder: images only (a training set's zip holds its .txt captions too), no hidden files
    members = [m for m in archive.infolist()
               if not m.is_dir() and not hidden(m.filename) and is_image_filename(m.filename)]
    if len(members) > room:
        raise HTTPError(413, f"{name}: more than {cfg.max_batch_files} images in one batch")
    if sum(m.file_size for m in members) > budget:
        raise HTTPError(413, f"{name}: the batch unpacks to more than the {cfg.max_batch_bytes}-byte limit")
    for m in members:
        inner = "/".join([name] + [p for p in m.filename.replace("\\", "/").split("/") if p not in ("", ".", "..")])
        if m.file_size > cfg.max_upload_bytes:
            out.append((inner, None, f"{inner}: image of {m.file_size} bytes is over the "
                                     f"{cfg.max_upload_bytes}-byte limit"))
            continue
        try:
            with archive.open(m) as fp:
                out.append((inner, fp.read(cfg.max_upload_bytes + 1), None))
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError) as err:
            out.append((inner, None, f"{inner}: cannot be read from the zip ({one_line(err)})"))
    return out


def hidden(path: str) -> bool:
    parts = PurePosixPath(path.replace("\\", "/")).parts
    return any((p.startswith(".") and p not in (".", "..")) or p == "__MACOSX" for p in parts)


def sidecar_zip(held: dict[str, Any]) -> bytes:
    """Caption files (.txt, one line, UTF-8) for every ok record, at the image's path."""
    options = SidecarOptions(prefix=held.get("prefix"), suffix=held.get("suffix"))
    buf = io.BytesIO()
    used: set[str] = set()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for record in held["records"]:
            if not record.get("ok"):
                continue
            path = sidecar_path(PurePosixPath(record["source"]).as_posix()).as_posix()
            stem, dot, ext = path.rpartition(".")
            k = 1
            while path in used:  # two uploads of one name: keep both
                k += 1
                path = f"{stem}-{k}{dot}{ext}"
            used.add(path)
            z.writestr(path, caption_text(record["result"]["prompt"], options, held.get("fits")) + "\n")
    return buf.getvalue()
