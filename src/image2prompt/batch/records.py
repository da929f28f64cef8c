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

Writing (:func:`open_output`): JSONL and CSV are journals, every record written and
flushed as it comes (fsync every ``fsync_every`` records or ``fsync_seconds``); a torn
last line left by a crash is cut off when the file is opened again. Parquet cannot be
appended: the records go to the journal ``FILE.journal.jsonl`` beside it while the run
lasts, and :meth:`RecordWriter.close` writes the Parquet file from it (pyarrow),
atomically, and removes the journal. Opening a finished Parquet file again seeds a new
journal from it, so a resumed run appends.

No torch here; pyarrow is imported only for Parquet.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import Image2PromptError, one_line
from ..results import Result
from ..spreadsheet import spreadsheet_safe, spreadsheet_value

__all__ = [
    "FLAT_COLUMNS", "FORMATS", "OutputError", "RecordWriter", "copy_record", "flatten_record", "format_for",
    "journal_path", "make_record", "open_output", "read_records", "record_key",
]

log = logging.getLogger(__name__)

#: Output formats, chosen from the file's extension or given.
FORMATS = ("jsonl", "csv", "parquet")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}

#: The columns of a flat record (CSV header, Parquet schema), in order.
FLAT_COLUMNS = ("source", "content_hash", "fingerprint", "ok", "error", "prompt", "negative_prompt", "caption",
                "similarity", "mode", "clip_model", "caption_model", "weak_match", "token_count", "phrases", "trace",
                "specificity", "rejected")
#: Earlier versions' CSV header (before ``specificity`` and ``rejected``): such an output is
#: still resumed, its new rows written with its own columns.
_OLD_CSV_HEADERS = (FLAT_COLUMNS[:16],)
_BOOL_COLUMNS = ("ok", "weak_match")
_FLOAT_COLUMNS = ("similarity", "specificity")
_INT_COLUMNS = ("token_count",)

#: Records read from the journal per Parquet row group.
_ROW_GROUP = 8192


class OutputError(Image2PromptError):
    """An output file that cannot be used (an unknown format, CSV columns of another tool)."""


# --- records -----------------------------------------------------------------------------


def make_record(source: str, content_hash: str | None, fingerprint: str, result: Result | None,
                error: str | None, *, scores: bool = False) -> dict[str, Any]:
    """One input's record (see the module docstring). ``scores`` keeps ``result["trace"]``
    (the top phrases per category of ``SearchSettings(trace=True, trace_top=K)``)."""
    record: dict[str, Any] = {"source": source, "content_hash": content_hash, "fingerprint": fingerprint}
    if error is None and result is not None:
        data = result.to_dict()
        if not scores:
            data.pop("trace", None)
        data["source"] = source
        record["ok"] = True
        record["result"] = data
    else:
        record["ok"] = False
        record["error"] = one_line(error if error is not None else f"{source}: no result")
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
    row: dict[str, Any] = {c: None for c in FLAT_COLUMNS}
    row.update(source=record.get("source"), content_hash=record.get("content_hash"),
               fingerprint=record.get("fingerprint"), ok=bool(record.get("ok")), error=record.get("error"))
    if res is not None:
        negative = res.get("negative")
        row.update(prompt=res.get("prompt"), caption=res.get("caption"), similarity=res.get("similarity"),
                   mode=res.get("mode"), clip_model=res.get("clip_model"), caption_model=res.get("caption_model"),
                   weak_match=res.get("weak_match"), token_count=res.get("token_count"),
                   negative_prompt=negative.get("prompt") if isinstance(negative, dict) else None,
                   phrases=json.dumps(res.get("phrases") or [], ensure_ascii=False),
                   specificity=res.get("specificity"),
                   rejected=json.dumps(res.get("rejected") or [], ensure_ascii=False))
        if res.get("trace") is not None:
            row["trace"] = json.dumps(res["trace"], ensure_ascii=False)
    return row


# --- formats and paths ---------------------------------------------------------------------


def format_for(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """``fmt`` if given, else the format named by the file's extension."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise OutputError(f"unknown output format {fmt!r}; choose one of: {', '.join(FORMATS)}")
        return fmt
    ext = Path(path).suffix.lower()
    try:
        return _EXTENSIONS[ext]
    except KeyError:
        raise OutputError(f"{os.fspath(path)}: cannot tell the output format from the extension "
                          f"{ext or '(none)'}; use .jsonl, .csv or .parquet, or --format") from None


def journal_path(path: str | os.PathLike[str]) -> Path:
    """Where a Parquet output's records live while a run lasts: ``FILE.journal.jsonl``."""
    p = Path(path)
    return p.with_name(p.name + ".journal.jsonl")


# --- reading --------------------------------------------------------------------------------


def read_records(path: str | os.PathLike[str], fmt: str | None = None) -> Iterator[dict[str, Any]]:
    """The records an output holds, in file order (a Parquet output: its journal while one exists).

    A line that does not parse (a torn last line) is skipped.
    """
    fmt = format_for(path, fmt)
    p = Path(path)
    if fmt == "parquet":
        journal = journal_path(p)
        if journal.exists():
            yield from _read_jsonl(journal)
        elif p.exists():
            yield from _read_parquet(p)
        return
    if not p.exists():
        return
    yield from (_read_jsonl(p) if fmt == "jsonl" else _read_csv(p))


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as f:
        for _, rec in _jsonl_lines(f):
            yield rec


def _jsonl_lines(f: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(offset, record) per parsable line of a binary JSONL stream."""
    offset = f.tell()
    for line in f:
        start, offset = offset, offset + len(line)
        rec = _parse_json_line(line)
        if rec is not None:
            yield start, rec


def _parse_json_line(line: bytes) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except ValueError:
        log.warning("skipping a line that is not JSON (%d bytes)", len(line))
        return None
    return rec if isinstance(rec, dict) else None


def _read_csv(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as f:
        header = _csv_header(f)
        if header is None:
            return
        for _, rec in _csv_lines(f, header):
            yield rec


def _csv_header(f: IO[bytes]) -> list[str] | None:
    line = f.readline()
    if not line.strip():
        return None
    return next(csv.reader([line.decode("utf-8-sig")]))


def _csv_lines(f: IO[bytes], header: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    offset = f.tell()
    for line in f:
        start, offset = offset, offset + len(line)
        rec = _parse_csv_line(line, header)
        if rec is not None:
            yield start, rec


def _parse_csv_line(line: bytes, header: list[str]) -> dict[str, Any] | None:
    text = line.decode("utf-8", errors="replace")
    if not text.strip():
        return None
    try:
        cells = next(csv.reader([text]))
    except (csv.Error, StopIteration):
        return None
    if len(cells) != len(header):
        log.warning("skipping a CSV row with %d cells instead of %d", len(cells), len(header))
        return None
    return _typed(dict(zip(header, cells)))


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if v == "" or v is None:
            out[k] = None if k not in _BOOL_COLUMNS else (False if k == "ok" else None)
        elif k in _BOOL_COLUMNS:
            out[k] = v if isinstance(v, bool) else str(v).strip().lower() in ("true", "1", "yes")
        elif k in _FLOAT_COLUMNS:
            out[k] = float(v)
        elif k in _INT_COLUMNS:
            out[k] = int(float(v))
        else:
            out[k] = spreadsheet_value(v)
    return out


def _read_parquet(path: Path) -> Iterator[dict[str, Any]]:
    pq = _parquet()
    f = pq.ParquetFile(path)
    for batch in f.iter_batches(batch_size=_ROW_GROUP):
        yield from batch.to_pylist()


def _parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the environment
        raise OutputError("Parquet output needs pyarrow (pip install pyarrow)") from None
    return pq


def _arrow_schema() -> Any:
    import pyarrow as pa

    types = {"ok": pa.bool_(), "weak_match": pa.bool_(), "similarity": pa.float64(), "specificity": pa.float64(),
             "token_count": pa.int64()}
    return pa.schema([(c, types.get(c, pa.string())) for c in FLAT_COLUMNS])


# --- writing --------------------------------------------------------------------------------


def _csv_cell(value: Any) -> Any:
    """A CSV cell on one physical line (so every row is one line: offsets and torn-tail repair), that
    no spreadsheet reads as a formula (:func:`image2prompt.spreadsheet.spreadsheet_safe`)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and ("\n" in value or "\r" in value):
        value = " ".join(value.splitlines())
    return spreadsheet_safe(value)  # no cell starts a formula (read back by _typed)


class RecordWriter:
    """Appends records to an output and knows what it already holds.

    Use :func:`open_output`. ``write(record)`` appends and flushes one record;
    ``close()`` syncs (and, for Parquet, writes the Parquet file). What the output held
    when it was opened, and everything written since, is indexed: :meth:`done_keys`,
    :meth:`has_source`, :meth:`find` (the first record with a content hash, read back from
    the file) and :meth:`error_sources`.
    """

    def __init__(self, path: str | os.PathLike[str], fmt: str | None = None, *, fsync_every: int = 64,
                 fsync_seconds: float = 5.0) -> None:
        self.path = Path(path)
        self.format = format_for(self.path, fmt)
        self.fsync_every = max(1, int(fsync_every))
        self.fsync_seconds = float(fsync_seconds)
        self.count = 0  # records written since opening
        self.closed = False
        # what the file holds: (hash, fp) -> offset of the first record with it; (source, fp); hashless keys
        self._by_hash: dict[tuple[str, str], int] = {}
        self._sources: set[tuple[str, str, str]] = set()  # (source, content hash or "", fingerprint)
        self._hashless: set[tuple[str, str]] = set()
        self._scored: set[tuple[str, str]] = set()  # (hash, fp) of ok records with scores (result.trace)
        self._errors: dict[str, dict[str, None]] = {}  # fingerprint -> sources of error records, in order
        self._header: list[str] | None = None
        self._unsynced = 0
        self._synced_at = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_output(self.path)  # one writer per output: two would interleave their records
        if self.format == "parquet":
            self.file = journal_path(self.path)
            if not self.file.exists() and self.path.exists():
                self._seed_journal()
        else:
            self.file = self.path
        self._repair_tail()
        self._scan()
        self._out: IO[bytes] = open(self.file, "ab")
        self._size = self._out.seek(0, io.SEEK_END)
        if self.format == "csv" and self._size == 0:
            self._header = list(FLAT_COLUMNS)
            self._append(_csv_line(FLAT_COLUMNS))
        self._reader: IO[bytes] | None = None

    # -- what is there ------------------------------------------------------------------
    def done_keys(self) -> set[tuple[str, str]]:
        """The keys (:func:`record_key`) of every record the output holds."""
        return set(self._by_hash) | self._hashless

    def has_source(self, source: str, fingerprint: str, content_hash: str | None = None) -> bool:
        """True when a record of ``fingerprint`` is for ``source`` (with this content hash, or none)."""
        return (self._norm(source), content_hash or "", fingerprint) in self._sources

    def has_key(self, key: tuple[str, str]) -> bool:
        """True when a record has this key (:func:`record_key`)."""
        return key in self._by_hash or (self._norm(key[0]), key[1]) in self._hashless

    def find(self, content_hash: str, fingerprint: str) -> dict[str, Any] | None:
        """The first record with this content hash and fingerprint, read back from the file."""
        offset = self._by_hash.get((content_hash, fingerprint))
        if offset is None:
            return None
        self._out.flush()
        if self._reader is None:
            self._reader = open(self.file, "rb")
        self._reader.seek(offset)
        line = self._reader.readline()
        if self.format == "csv":
            return _parse_csv_line(line, self._header or list(FLAT_COLUMNS))
        return _parse_json_line(line)

    def has_scores(self, content_hash: str, fingerprint: str) -> bool:
        """True when an ok record with this content hash and fingerprint has scores (``--store-scores``)."""
        return (content_hash, fingerprint) in self._scored

    def error_sources(self, fingerprint: str) -> list[str]:
        """The sources of the error records of ``fingerprint``, in file order."""
        return list(self._errors.get(fingerprint, ()))

    def error_fingerprints(self) -> list[str]:
        """The fingerprints that error records (still failing inputs) are under."""
        return [fp for fp, sources in self._errors.items() if sources]

    # -- writing ------------------------------------------------------------------------
    def write(self, record: dict[str, Any]) -> None:
        """Append one record and flush it (fsync every ``fsync_every`` records or ``fsync_seconds``)."""
        if self.closed:
            raise ValueError("write to a closed RecordWriter")
        line = record_line(record, "csv" if self.format == "csv" else "jsonl", self._header or FLAT_COLUMNS)
        offset = self._size
        self._append(line)
        self._index(offset, record)
        self.count += 1
        self._unsynced += 1
        if self._unsynced >= self.fsync_every or time.monotonic() - self._synced_at >= self.fsync_seconds:
            self.sync()

    def sync(self) -> None:
        """Flush and fsync what was written."""
        self._out.flush()
        os.fsync(self._out.fileno())
        self._unsynced = 0
        self._synced_at = time.monotonic()

    def drop_errors(self, fingerprint: str | None = None, keep: list[dict[str, Any]] | None = None) -> int:
        """Rewrite the output without its error records (of ``fingerprint``, or all), atomically.

        Returns how many were dropped (and appends them to ``keep``, when given: a retry writes
        back those it did not reach). Used by ``--retry-failed`` before the retry.
        """
        self.sync()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        dropped = 0
        tmp = self.file.with_name(f".{self.file.name}.tmp")
        with open(self.file, "rb") as src, open(tmp, "wb") as dst:
            if self.format == "csv":
                head = src.readline()
                dst.write(head)
                lines: Iterator[tuple[bytes, dict[str, Any] | None]] = (
                    (ln, _parse_csv_line(ln, self._header or list(FLAT_COLUMNS))) for ln in src)
            else:
                lines = ((ln, _parse_json_line(ln)) for ln in src)
            for line, rec in lines:
                if rec is None:
                    continue
                if not rec.get("ok") and (fingerprint is None or rec.get("fingerprint") == fingerprint):
                    dropped += 1
                    if keep is not None:
                        keep.append(rec)
                    continue
                dst.write(line)
            dst.flush()
            os.fsync(dst.fileno())
        self._out.close()
        os.replace(tmp, self.file)
        _fsync_dir(self.file.parent)
        self._by_hash.clear()
        self._sources.clear()
        self._hashless.clear()
        self._scored.clear()
        self._errors.clear()
        self._scan()
        self._out = open(self.file, "ab")
        self._size = self._out.seek(0, io.SEEK_END)
        return dropped

    def close(self) -> None:
        """Sync the journal; for Parquet, write the Parquet file from it (atomically) and remove it."""
        if self.closed:
            return
        self.closed = True
        try:
            self.sync()
            self._out.close()
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            if self.format == "parquet":
                _write_parquet(self.file, self.path)
                os.unlink(self.file)
                _fsync_dir(self.path.parent)
        finally:
            self._lock.close()

    def abort(self) -> None:
        """Close the files without finishing (a Parquet output keeps its journal for a resume)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.sync()
        finally:
            self._out.close()
            if self._reader is not None:
                self._reader.close()
            self._lock.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- internals ------------------------------------------------------------------------
    def _norm(self, source: str) -> str:
        return _csv_cell(source) if self.format == "csv" else source

    def _append(self, line: bytes) -> None:
        self._out.write(line)
        self._out.flush()
        self._size += len(line)

    def _index(self, offset: int, record: dict[str, Any]) -> None:
        fp = record.get("fingerprint") or ""
        source = record.get("source") or ""
        h = record.get("content_hash")
        self._sources.add((self._norm(source), h or "", fp))
        if h:
            self._by_hash.setdefault((h, fp), offset)
            res = record.get("result")
            if record.get("ok") and (res.get("trace") if isinstance(res, dict) else record.get("trace")):
                self._scored.add((h, fp))
        else:
            self._hashless.add((self._norm(source), fp))
        if not record.get("ok"):
            self._errors.setdefault(fp, {})[source] = None
        elif source in self._errors.get(fp, ()):  # it failed once and worked since
            del self._errors[fp][source]

    def _repair_tail(self) -> None:
        """Cut a torn last line (a crash in the middle of a write) back to the last newline."""
        if not self.file.exists():
            return
        size = self.file.stat().st_size
        if size == 0:
            return
        with open(self.file, "r+b") as f:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            pos, chunk = size, 1 << 16
            cut = 0
            while pos > 0:
                start = max(0, pos - chunk)
                f.seek(start)
                data = f.read(pos - start)
                at = data.rfind(b"\n")
                if at >= 0:
                    cut = start + at + 1
                    break
                pos = start
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
        log.warning("%s: cut off a torn last line (%d bytes) left by an interrupted run", self.file, size - cut)

    def _scan(self) -> None:
        if not self.file.exists():
            return
        with open(self.file, "rb") as f:
            if self.format == "csv":
                header = _csv_header(f)
                if header is None:
                    return
                if tuple(header) != FLAT_COLUMNS and tuple(header) not in _OLD_CSV_HEADERS:
                    raise OutputError(f"{self.file}: its columns are not those of an image2prompt batch output; "
                                      "choose another --output")
                self._header = header
                lines = _csv_lines(f, header)
            else:
                lines = _jsonl_lines(f)
            for offset, rec in lines:
                self._index(offset, rec)

    def _seed_journal(self) -> None:
        """A finished Parquet output is being resumed: copy its rows into a new journal (atomically)."""
        tmp = self.file.with_name(f".{self.file.name}.tmp")
        with open(tmp, "wb") as f:
            for rec in _read_parquet(self.path):
                f.write((json.dumps(rec, ensure_ascii=False, default=json_default) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.file)


def _lock_output(path: Path) -> IO[bytes]:
    """An exclusive lock on ``FILE.lock`` for as long as the writer is open. The kernel drops it
    when the process ends, even after ``kill -9``, so a stale lock file never blocks a rerun.
    The lock file sits beside the real file (links in its path resolved), so two runs that name
    the same output through a linked folder or a link to the file share one lock."""
    real = Path(os.path.realpath(path))
    lock = open(real.with_name(real.name + ".lock"), "ab")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return lock
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise OutputError(f"{path}: another run is writing this output; wait for it to end, "
                          "or pass another --output") from None
    return lock


def open_output(path: str | os.PathLike[str], fmt: str | None = None, **options: Any) -> RecordWriter:
    """A :class:`RecordWriter` appending to ``path`` (format from the extension unless ``fmt``)."""
    return RecordWriter(path, fmt, **options)


def record_line(record: dict[str, Any], fmt: str, columns: Sequence[str] = FLAT_COLUMNS) -> bytes:
    """One record as one line of a JSONL or CSV output (CSV: flattened to ``columns``)."""
    if fmt == "csv":
        row = flatten_record(record)
        return _csv_line([_csv_cell(row.get(c)) for c in columns])
    if fmt != "jsonl":
        raise OutputError(f"records_bytes: unknown format {fmt!r}; choose jsonl or csv")
    return (json.dumps(record, ensure_ascii=False, allow_nan=False, default=json_default) + "\n").encode()


def records_bytes(records: Iterable[dict[str, Any]], fmt: str) -> bytes:
    """Records as a whole JSONL or CSV file in memory (what a download of a small batch is);
    the same lines a :class:`RecordWriter` appends."""
    head = _csv_line(FLAT_COLUMNS) if fmt == "csv" else b""
    return head + b"".join(record_line(r, fmt) for r in records)


def _csv_line(cells: Iterable[Any]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(list(cells))
    return buf.getvalue().encode("utf-8")


def json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_parquet(journal: Path, target: Path) -> None:
    """The Parquet file of the journal's records, written to a temporary file and moved into place."""
    pq = _parquet()
    import pyarrow as pa

    schema = _arrow_schema()
    tmp = target.with_name(f".{target.name}.tmp")
    writer = pq.ParquetWriter(tmp, schema)
    try:
        rows: list[dict[str, Any]] = []
        written = 0
        for rec in _read_jsonl(journal):
            rows.append(flatten_record(rec))
            if len(rows) >= _ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                written, rows = written + len(rows), []
        if rows or not written:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    finally:
        writer.close()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
