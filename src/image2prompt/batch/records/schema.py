"""What a record is, whatever file holds it: building, copying, keying and flattening records,
the output formats and the paths beside an output. No file is read or written here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ...errors import Image2PromptError, one_line
from ...results import Result

#: Output formats, chosen from the file's extension or given.
FORMATS = ("jsonl", "csv", "parquet")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}

#: The columns of a flat record (CSV header, Parquet schema), in order.
FLAT_COLUMNS = ("source", "content_hash", "fingerprint", "ok", "error", "prompt", "negative_prompt", "caption",
                "similarity", "mode", "clip_model", "caption_model", "weak_match", "token_count", "phrases", "trace",
                "specificity", "rejected")
#: The flat columns that are not strings (CSV cells are read back as these, Parquet columns have them).
FLAT_TYPES: dict[str, type] = {"ok": bool, "weak_match": bool, "similarity": float, "specificity": float,
                               "token_count": int}


#: The flat columns copied as they are from a record's result.
_FROM_RESULT = ("prompt", "caption", "similarity", "mode", "clip_model", "caption_model", "weak_match", "token_count",
                "specificity")


class OutputError(Image2PromptError):
    """An output file that cannot be used (an unknown format, CSV columns of another tool)."""


def make_record(source: str, content_hash: str | None, fingerprint: str, result: Result | None,
                error: str | None, *, scores: bool = False) -> dict[str, Any]:
    """One input's record (see :mod:`image2prompt.batch.records`). ``scores`` keeps ``result["trace"]``
    (the top phrases per category of ``SearchSettings(trace=True, trace_top=K)``)."""
    record: dict[str, Any] = {"source": source, "content_hash": content_hash, "fingerprint": fingerprint}
    if error is None and result is not None:
        data = result.to_dict()
        if not scores:
            data.pop("trace", None)
        data["source"] = source
        record.update(ok=True, result=data)
    else:
        record.update(ok=False, error=one_line(error if error is not None else f"{source}: no result"))
    return record


def copy_record(record: dict[str, Any], source: str) -> dict[str, Any]:
    """``record`` for another input with the same content: its own source, the same result or error."""
    old = record.get("source")
    out = dict(record)
    out["source"] = source
    if isinstance(out.get("result"), dict):
        out["result"] = dict(out["result"], source=source)
    err = out.get("error")
    if isinstance(err, str) and isinstance(old, str) and err.startswith(old + ": "):
        out["error"] = f"{source}: {err[len(old) + 2:]}"
    elif isinstance(err, str) and not err.startswith(source):
        out["error"] = f"{source}: {err}"
    return out


def record_key(record: dict[str, Any]) -> tuple[str, str]:
    """``(content_hash, fingerprint)``, or ``(source, fingerprint)`` for a record without a hash."""
    return (record.get("content_hash") or record.get("source") or "", record.get("fingerprint") or "")


def flatten_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record as one row of :data:`FLAT_COLUMNS` (a flat record is returned as it is, re-keyed)."""
    if "result" not in record and "prompt" in record:  # already flat (read from CSV or Parquet)
        return {c: record.get(c) for c in FLAT_COLUMNS}
    res = record.get("result") if isinstance(record.get("result"), dict) else None
    row: dict[str, Any] = dict.fromkeys(FLAT_COLUMNS)
    row.update({c: record.get(c) for c in ("source", "content_hash", "fingerprint", "error")}, ok=bool(record.get("ok")))
    if res is not None:
        negative = res.get("negative")
        row.update({c: res.get(c) for c in _FROM_RESULT},
                   negative_prompt=negative.get("prompt") if isinstance(negative, dict) else None,
                   phrases=json.dumps(res.get("phrases") or [], ensure_ascii=False),
                   rejected=json.dumps(res.get("rejected") or [], ensure_ascii=False))
        if res.get("trace") is not None:
            row["trace"] = json.dumps(res["trace"], ensure_ascii=False)
    return row


def json_default(value: Any) -> Any:
    """``json.dumps``'s ``default`` for records: numpy scalars and arrays as Python values."""
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def format_for(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """``fmt`` if given, else the format named by the file's extension."""
    if fmt is not None and fmt not in FORMATS:
        raise OutputError(f"unknown output format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    ext = Path(path).suffix.lower()
    if fmt is None and ext not in _EXTENSIONS:
        raise OutputError(f"{os.fspath(path)}: cannot tell the output format from the extension "
                          f"{ext or '(none)'}; use .jsonl, .csv or .parquet, or --format")
    return fmt or _EXTENSIONS[ext]


def journal_path(path: str | os.PathLike[str]) -> Path:
    """Where a Parquet output's records live while a run lasts: ``FILE.journal.jsonl``."""
    p = Path(path)
    return p.with_name(p.name + ".journal.jsonl")
