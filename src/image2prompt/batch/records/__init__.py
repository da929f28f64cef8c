"""Batch records and the outputs that hold them (JSONL, CSV, Parquet), shared by every batch engine.

A **record** is a plain dict, one per input, built by :func:`make_record`::

    {"source": str,               # display name: a path, URL or "shard.tar/KEY.jpg"
     "content_hash": str | None,  # sha256 hex of the input's bytes; None when they could not be read
     "fingerprint": str,          # Interrogator.fingerprint(settings): settings + models + vocabulary
     "ok": bool,
     "result": {...}}             # when ok: Result.to_dict() ("trace" only with scores=True)
     # or, when not ok:
     "error": str}                # one line, naming the source

A record's **key** (:func:`record_key`) is ``(content_hash, fingerprint)``, or ``(source, fingerprint)``
when there is no hash: a resumed run skips what has a record with its key, and a reader keeps the
records of the fingerprint it wants (changed settings add records under another fingerprint; the old
ones stay).

CSV and Parquet hold **flat** records (:func:`flatten_record`, the columns of :data:`FLAT_COLUMNS`):
``source, content_hash, fingerprint, ok, error, prompt, negative_prompt, caption, similarity, mode,
clip_model, caption_model, weak_match, token_count``, ``phrases`` and ``trace`` as JSON strings
(``trace`` empty unless scores were kept), ``specificity``, and ``rejected`` (what the relevance floor
kept out) as a JSON string. :func:`read_records` yields what the file holds: nested dicts from JSONL,
flat dicts from CSV and Parquet (typed: ``ok`` and ``weak_match`` are bools, ``similarity`` and
``specificity`` floats, ``token_count`` an int, empty cells None).

Writing (:func:`open_output`, a :class:`RecordWriter`): JSONL and CSV are journals, every record
written and flushed as it comes (fsync every ``fsync_every`` records or ``fsync_seconds``); a torn last
line left by a crash is cut off when the file is opened again. Parquet cannot be appended: the records
go to the journal ``FILE.journal.jsonl`` beside it while the run lasts, and :meth:`RecordWriter.close`
writes the Parquet file from it (pyarrow), atomically, and removes the journal. Opening a finished
Parquet file again seeds a new journal from it, so a resumed run appends.

:mod:`.schema` holds what a record is, :mod:`.writers` the writers. No torch here; pyarrow is imported
only for Parquet.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from .writers import CsvWriter, JsonlWriter, ParquetWriter, RecordIndex, RecordWriter, record_line, records_bytes

__all__ = [
    "FLAT_COLUMNS", "FORMATS", "WRITERS", "CsvWriter", "JsonlWriter", "OutputError", "ParquetWriter",
    "RecordIndex", "RecordWriter", "copy_record", "flatten_record", "format_for", "journal_path", "json_default",
    "make_record", "open_output", "read_records", "record_key", "record_line", "records_bytes",
]

#: The writer of each output format (:data:`FORMATS`): the one place a format is chosen.
WRITERS: dict[str, type[RecordWriter]] = {"jsonl": JsonlWriter, "csv": CsvWriter, "parquet": ParquetWriter}


def open_output(path: str | os.PathLike[str], fmt: str | None = None, **options: Any) -> RecordWriter:
    """A :class:`RecordWriter` appending to ``path`` (format from the extension unless ``fmt``);
    ``options``: ``fsync_every``, ``fsync_seconds``."""
    return WRITERS[format_for(path, fmt)](path, **options)


def read_records(path: str | os.PathLike[str], fmt: str | None = None) -> Iterator[dict[str, Any]]:
    """The records an output holds, in file order (a Parquet output: its journal while one exists).

    A line that does not parse (a torn last line) is skipped.
    """
    yield from WRITERS[format_for(path, fmt)].read(Path(path))

