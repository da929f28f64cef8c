"""Batch records and the outputs that hold them (JSONL, CSV, Parquet), shared by every batch engine.

A **record** is a plain dict, one per input, built by :func:`make_record`::

    {"source": str,               # display name: a path, URL or "shard.tar/KEY.jpg"
     "content_hash": str | None,  # sha256 hex of the input's bytes; None when they could not be read
     "fingerprint": str,          # Interrogator.fingerprint(settings): settings + models + vocabulary
     "ok": bool,
     "result": {...}}             # when ok: Result.to_dict() ("trace" only with scores=True)
     # or, when not ok:
     "error": str}                # one line, naming the source

A record's **key** (:func:`record_key`) is ``(content_hash, fingerprint)``, or
``(source, fingerprint)`` when there is no hash: a resumed run skips what has a record
with its key, and a reader keeps the records of the fingerprint it wants (changed
settings add records under another fingerprint; the old ones stay).

CSV and Parquet hold **flat** records (:func:`flatten_record`, the columns of
:data:`FLAT_COLUMNS`): ``source, content_hash, fingerprint, ok, error, prompt,
negative_prompt, caption, similarity, mode, clip_model, caption_model, weak_match,
token_count``, ``phrases`` and ``trace`` as JSON strings (``trace`` empty unless
scores were kept), ``specificity``, and ``rejected`` (what the relevance floor kept out)
as a JSON string. :func:`read_records` yields what the file holds: nested dicts from
JSONL, flat dicts from CSV and Parquet (typed: ``ok`` and ``weak_match`` are bools,
``similarity`` and ``specificity`` floats, ``token_count`` an int, empty cells None).

Writing (:func:`open_output`, a :class:`RecordWriter`): JSONL and CSV are journals, every
record written and flushed as it comes (fsync every ``fsync_every`` records or
``fsync_seconds``); a torn last line left by a crash is cut off when the file is opened
again. Parquet cannot be appended: the records go to the journal ``FILE.journal.jsonl``
beside it while the run lasts, and :meth:`RecordWriter.close` writes the Parquet file from
it (pyarrow), atomically, and removes the journal. Opening a finished Parquet file again
seeds a new journal from it, so a resumed run appends.

The modules: :mod:`.schema` (records, formats, paths), :mod:`.base` (the
:class:`RecordWriter` protocol and :class:`LineWriter`, what every format's writer shares),
:mod:`.files` (locking, torn tails, atomic rewrites), and one writer per format:
:class:`JsonlWriter` (:mod:`.jsonl`), :class:`CsvWriter` (:mod:`.csvfile`) and
:class:`ParquetWriter` (:mod:`.parquet`). :data:`WRITERS` is where a format picks its writer.

No torch here; pyarrow is imported only for Parquet.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .base import LineWriter, RecordIndex, RecordWriter
from .csvfile import CsvWriter, csv_line, csv_record_line
from .jsonl import JsonlWriter, jsonl_line
from .parquet import ParquetWriter
from .schema import (
    FLAT_COLUMNS,
    FORMATS,
    OutputError,
    copy_record,
    flatten_record,
    format_for,
    journal_path,
    json_default,
    make_record,
    record_key,
)

__all__ = [
    "FLAT_COLUMNS", "FORMATS", "WRITERS", "CsvWriter", "JsonlWriter", "LineWriter", "OutputError", "ParquetWriter",
    "RecordIndex", "RecordWriter", "copy_record", "flatten_record", "format_for", "journal_path", "json_default",
    "make_record", "open_output", "read_records", "record_key", "record_line", "records_bytes",
]

#: The writer of each output format (:data:`FORMATS`): the one place a format is chosen.
WRITERS: dict[str, type[LineWriter]] = {
    "jsonl": JsonlWriter, "csv": CsvWriter, "parquet": ParquetWriter,
}


def open_output(path: str | os.PathLike[str], fmt: str | None = None, **options: Any) -> RecordWriter:
    """A :class:`RecordWriter` appending to ``path`` (format from the extension unless ``fmt``);
    ``options``: ``fsync_every``, ``fsync_seconds``."""
    return WRITERS[format_for(path, fmt)](path, **options)


def read_records(path: str | os.PathLike[str], fmt: str | None = None) -> Iterator[dict[str, Any]]:
    """The records an output holds, in file order (a Parquet output: its journal while one exists).

    A line that does not parse (a torn last line) is skipped.
    """
    yield from WRITERS[format_for(path, fmt)].read(Path(path))


def record_line(record: dict[str, Any], fmt: str, columns: Sequence[str] = FLAT_COLUMNS) -> bytes:
    """One record as one line of a JSONL or CSV output (CSV: flattened to ``columns``)."""
    if fmt == "csv":
        return csv_record_line(record, columns)
    if fmt != "jsonl":
        raise OutputError(f"records_bytes: unknown format {fmt!r}; choose jsonl or csv")
    return jsonl_line(record)


def records_bytes(records: Iterable[dict[str, Any]], fmt: str) -> bytes:
    """Records as a whole JSONL or CSV file in memory (what a download of a small batch is);
    the same lines a :class:`RecordWriter` appends."""
    head = csv_line(FLAT_COLUMNS) if fmt == "csv" else b""
    return head + b"".join(record_line(r, fmt) for r in records)
