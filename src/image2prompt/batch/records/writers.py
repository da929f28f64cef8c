"""The writers of the output formats (see :mod:`image2prompt.batch.records`), and what they share.

:class:`RecordWriter` keeps an output that is a journal of one record per line (a JSONL file, a CSV
file, a Parquet output's ``FILE.journal.jsonl``); a format's writer says only how its lines are
written and read, and what it does on opening and closing. CSV cells stay on one physical line (so
offsets and the torn-tail repair work line by line) and none reads as a spreadsheet formula
(:mod:`image2prompt.spreadsheet`); reading undoes that quoting and types the cells back.

Why one module over 500 lines: the writers are small subclasses of one base whose locking,
torn-tail repair, index and atomic rewrite they all rely on; apart, each would import the
others' private helpers (the split into seven modules did, and was larger).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from ...spreadsheet import spreadsheet_safe, spreadsheet_value
from .schema import FLAT_COLUMNS, FLAT_TYPES, OutputError, flatten_record, journal_path, json_default

log = logging.getLogger(__package__)


class RecordIndex:
    """What an output holds, by key. ``norm`` maps a source to the form its file stores (a CSV
    cell), so that a source looked up matches the one read back."""

    def __init__(self, norm: Callable[[str], str]) -> None:
        self.norm = norm
        self.by_hash: dict[tuple[str, str], int] = {}  # (hash, fp) -> offset of the first record with it
        self.sources: set[tuple[str, str, str]] = set()  # (source, content hash or "", fingerprint)
        self.hashless: set[tuple[str, str]] = set()  # (source, fp) of records without a hash
        self.scored: set[tuple[str, str]] = set()  # (hash, fp) of ok records with scores (result.trace)
        self.errors: dict[str, dict[str, None]] = {}  # fingerprint -> sources of error records, in order

    def add(self, offset: int, record: dict[str, Any]) -> None:
        """Note one record, found at ``offset`` of the file."""
        fp = record.get("fingerprint") or ""
        source = record.get("source") or ""
        h = record.get("content_hash")
        self.sources.add((self.norm(source), h or "", fp))
        if h:
            self.by_hash.setdefault((h, fp), offset)
            res = record.get("result")
            if record.get("ok") and (res.get("trace") if isinstance(res, dict) else record.get("trace")):
                self.scored.add((h, fp))
        else:
            self.hashless.add((self.norm(source), fp))
        if not record.get("ok"):
            self.errors.setdefault(fp, {})[source] = None
        elif source in self.errors.get(fp, ()):  # it failed once and worked since
            del self.errors[fp][source]


class RecordWriter:
    """Appends records to an output and knows what it already holds (:func:`~.open_output` makes one):
    what the output held when it was opened, and everything written since, is indexed.

    It locks the file, cuts a torn tail, indexes what is there (:class:`RecordIndex`), appends and syncs,
    and rewrites the file atomically without its errors. The lines are JSON unless a format's writer (a
    subclass) overrides :meth:`read` and the hooks: :meth:`_encode` and :meth:`_decode` (one line),
    :meth:`_lines` (the records of an open file, with their offsets), :meth:`_journal` (the file appended
    to), :meth:`_start` (after opening), :meth:`_copy_head` (what a rewrite keeps before the records),
    :meth:`_finish` (on close) and :meth:`_norm` (a source as the file stores it).
    """

    format: str  # the format's name (FORMATS)

    def __init__(self, path: str | os.PathLike[str], *, fsync_every: int = 64, fsync_seconds: float = 5.0) -> None:
        self.path = Path(path)
        self.fsync_every = max(1, int(fsync_every))
        self.fsync_seconds = float(fsync_seconds)
        self.count = 0  # records written since opening
        self.closed = False
        self._unsynced = 0
        self._synced_at = time.monotonic()
        self._reader: IO[bytes] | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = lock_output(self.path)  # one writer per output: two would interleave their records
        self.file = self._journal()
        repair_tail(self.file)
        self._open()
        self._start()

    @classmethod
    def read(cls, path: Path) -> Iterator[dict[str, Any]]:
        """The records an output of this format at ``path`` holds, in file order (:func:`~.read_records`)."""
        if path.exists():
            yield from read_jsonl(path)

    # -- the format's hooks ----------------------------------------------------------------
    def _encode(self, record: dict[str, Any]) -> bytes:
        return jsonl_line(record)

    def _decode(self, line: bytes) -> dict[str, Any] | None:
        return parse_json_line(line)

    def _lines(self, f: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
        return parse_lines(f, self._decode)

    def _copy_head(self, src: IO[bytes], dst: IO[bytes]) -> None:
        pass

    def _journal(self) -> Path:
        return self.path

    def _start(self) -> None:
        pass

    def _finish(self) -> None:
        pass

    def _norm(self, source: str) -> str:
        return source

    # -- what is there ------------------------------------------------------------------
    def done_keys(self) -> set[tuple[str, str]]:
        """The keys (:func:`~.record_key`) of every record the output holds."""
        return set(self._index.by_hash) | self._index.hashless

    def has_source(self, source: str, fingerprint: str, content_hash: str | None = None) -> bool:
        """True when a record of ``fingerprint`` is for ``source`` (with this content hash, or none)."""
        return (self._norm(source), content_hash or "", fingerprint) in self._index.sources

    def has_key(self, key: tuple[str, str]) -> bool:
        """True when a record has this key (:func:`~.record_key`)."""
        return key in self._index.by_hash or (self._norm(key[0]), key[1]) in self._index.hashless

    def find(self, content_hash: str, fingerprint: str) -> dict[str, Any] | None:
        """The first record with this content hash and fingerprint, read back from the file."""
        offset = self._index.by_hash.get((content_hash, fingerprint))
        if offset is None:
            return None
        self._out.flush()
        if self._reader is None:
            self._reader = open(self.file, "rb")
        self._reader.seek(offset)
        return self._decode(self._reader.readline())

    def has_scores(self, content_hash: str, fingerprint: str) -> bool:
        """True when an ok record with this content hash and fingerprint has scores (``--store-scores``)."""
        return (content_hash, fingerprint) in self._index.scored

    def error_sources(self, fingerprint: str) -> list[str]:
        """The sources of the error records of ``fingerprint``, in file order."""
        return list(self._index.errors.get(fingerprint, ()))

    def error_fingerprints(self) -> list[str]:
        """The fingerprints that error records (still failing inputs) are under."""
        return [fp for fp, sources in self._index.errors.items() if sources]

    # -- writing ---------------------------------------------------------------------
    def write(self, record: dict[str, Any]) -> None:
        """Append one record and flush it (fsync every ``fsync_every`` records or ``fsync_seconds``)."""
        if self.closed:
            raise ValueError("write to a closed RecordWriter")
        offset = self._size
        self._append(self._encode(record))
        self._index.add(offset, record)
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
        self._close_reader()
        dropped = 0
        tmp = temp_beside(self.file)
        with open(self.file, "rb") as src, synced(tmp) as dst:
            self._copy_head(src, dst)
            for line in src:
                rec = self._decode(line)
                if rec is None:
                    continue
                if not rec.get("ok") and (fingerprint is None or rec.get("fingerprint") == fingerprint):
                    dropped += 1
                    if keep is not None:
                        keep.append(rec)
                    continue
                dst.write(line)
        self._out.close()
        os.replace(tmp, self.file)
        fsync_dir(self.file.parent)
        self._open()
        return dropped

    def close(self) -> None:
        """Sync; for Parquet, write the Parquet file (atomically) and remove the journal."""
        self._shut(finish=True)

    def abort(self) -> None:
        """Close the files without finishing (a Parquet output keeps its journal for a resume)."""
        self._shut(finish=False)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- internals ------------------------------------------------------------------------
    def _open(self) -> None:
        """Index what the file holds and open it for appending (on opening, and after a rewrite)."""
        self._index = RecordIndex(self._norm)
        if self.file.exists():
            with open(self.file, "rb") as f:
                for offset, rec in self._lines(f):
                    self._index.add(offset, rec)
        self._out: IO[bytes] = open(self.file, "ab")
        self._size = self._out.seek(0, io.SEEK_END)

    def _append(self, line: bytes) -> None:
        self._out.write(line)
        self._out.flush()
        self._size += len(line)

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _shut(self, finish: bool) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            try:
                self.sync()
            finally:
                self._out.close()
                self._close_reader()
            if finish:
                self._finish()
        finally:
            self._lock.close()


def parse_lines(f: IO[bytes], decode: Callable[[bytes], dict[str, Any] | None]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(offset, record) per line of a binary stream that ``decode`` parses (it returns None for the others)."""
    offset = f.tell()
    for line in f:
        start, offset = offset, offset + len(line)
        rec = decode(line)
        if rec is not None:
            yield start, rec


# --- JSONL ---------------------------------------------------------------------------------------


def jsonl_line(record: dict[str, Any]) -> bytes:
    """One record as one line of a JSONL output."""
    return (json.dumps(record, ensure_ascii=False, allow_nan=False, default=json_default) + "\n").encode()


def parse_json_line(line: bytes) -> dict[str, Any] | None:
    """The record of one JSONL line; None for a blank line or one that is not a JSON object."""
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except ValueError:
        log.warning("skipping a line that is not JSON (%d bytes)", len(line))
        return None
    return rec if isinstance(rec, dict) else None


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a JSONL file, in order (unparsable lines skipped)."""
    with open(path, "rb") as f:
        for _, rec in parse_lines(f, parse_json_line):
            yield rec


class JsonlWriter(RecordWriter):
    """A JSONL output: records appended as they come, nested as :func:`~.make_record` makes them."""

    format = "jsonl"


# --- CSV -----------------------------------------------------------------------------------------

#: Earlier versions' CSV header (before ``specificity`` and ``rejected``): such an output is
#: still resumed, its new rows written with its own columns.
_OLD_CSV_HEADERS = (FLAT_COLUMNS[:16],)


def csv_cell(value: Any) -> Any:
    """A CSV cell on one physical line (so every row is one line: offsets and torn-tail repair), that
    no spreadsheet reads as a formula (:func:`image2prompt.spreadsheet.spreadsheet_safe`)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and ("\n" in value or "\r" in value):
        value = " ".join(value.splitlines())
    return spreadsheet_safe(value)


def csv_line(cells: Iterable[Any]) -> bytes:
    """One CSV row, as the bytes of one line."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(list(cells))
    return buf.getvalue().encode("utf-8")


def csv_record_line(record: dict[str, Any], columns: Sequence[str] = FLAT_COLUMNS) -> bytes:
    """One record as one line of a CSV output: flattened to ``columns``."""
    row = flatten_record(record)
    return csv_line([csv_cell(row.get(c)) for c in columns])


def csv_header(f: IO[bytes]) -> list[str] | None:
    """The header of a binary CSV stream at its start; None for an empty file."""
    line = f.readline()
    return next(csv.reader([line.decode("utf-8-sig")])) if line.strip() else None


def parse_csv_line(line: bytes, header: list[str]) -> dict[str, Any] | None:
    """The typed flat record of one CSV line; None for a blank or malformed one."""
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


def _typed(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row's cells as :func:`~.read_records` gives them: typed, empty cells None (``ok``: False)."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        kind = FLAT_TYPES.get(k)
        if not v:
            out[k] = False if k == "ok" else None
        elif kind is bool:
            out[k] = v.strip().lower() in ("true", "1", "yes")
        elif kind is not None:
            out[k] = kind(float(v))  # a float, or an int written as one
        else:
            out[k] = spreadsheet_value(v)
    return out


class CsvWriter(RecordWriter):
    """A CSV output: flat records appended as they come, under the header it has (or is given)."""

    format = "csv"
    _header: list[str] | None = None  # the file's columns, once read or written

    @classmethod
    def read(cls, path: Path) -> Iterator[dict[str, Any]]:
        if not path.exists():
            return
        with open(path, "rb") as f:
            header = csv_header(f)
            if header is not None:
                for _, rec in parse_lines(f, lambda line: parse_csv_line(line, header)):
                    yield rec

    def _encode(self, record: dict[str, Any]) -> bytes:
        return csv_record_line(record, self._header or FLAT_COLUMNS)

    def _decode(self, line: bytes) -> dict[str, Any] | None:
        return parse_csv_line(line, self._header or list(FLAT_COLUMNS))

    def _lines(self, f: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
        header = csv_header(f)
        if header is None:
            return
        if tuple(header) != FLAT_COLUMNS and tuple(header) not in _OLD_CSV_HEADERS:
            raise OutputError(f"{self.file}: its columns are not those of an image2prompt batch output; "
                              "choose another --output")
        self._header = header
        yield from super()._lines(f)

    def _start(self) -> None:
        if self._size == 0:
            self._header = list(FLAT_COLUMNS)
            self._append(csv_line(FLAT_COLUMNS))

    def _copy_head(self, src: IO[bytes], dst: IO[bytes]) -> None:
        dst.write(src.readline())

    def _norm(self, source: str) -> str:
        return csv_cell(source)


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


# --- Parquet -------------------------------------------------------------------------------------

#: Records read from the journal per Parquet row group.
_ROW_GROUP = 8192


def _parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the environment
        raise OutputError("Parquet output needs pyarrow (pip install pyarrow)") from None
    return pq


def read_parquet(path: Path) -> Iterator[dict[str, Any]]:
    """The flat records of a Parquet file, in order."""
    for batch in _parquet().ParquetFile(path).iter_batches(batch_size=_ROW_GROUP):
        yield from batch.to_pylist()


def write_parquet(journal: Path, target: Path) -> None:
    """The Parquet file of the journal's records, written to a temporary file and moved into place."""
    pq = _parquet()
    import pyarrow as pa

    types = {bool: pa.bool_(), float: pa.float64(), int: pa.int64()}
    schema = pa.schema([(c, types[FLAT_TYPES[c]] if c in FLAT_TYPES else pa.string()) for c in FLAT_COLUMNS])
    tmp = temp_beside(target)
    rows = map(flatten_record, read_jsonl(journal))
    with pq.ParquetWriter(tmp, schema) as writer:
        group = list(itertools.islice(rows, _ROW_GROUP))
        while True:  # a row group per _ROW_GROUP records (an empty journal: one empty table)
            writer.write_table(pa.Table.from_pylist(group, schema=schema))
            group = list(itertools.islice(rows, _ROW_GROUP))
            if not group:
                break
    with open(tmp, "rb+") as f:  # written by pyarrow: fsync it before it takes the target's place
        os.fsync(f.fileno())
    os.replace(tmp, target)


class ParquetWriter(JsonlWriter):
    """A Parquet output: a JSONL journal while the run lasts, the Parquet file when it closes."""

    format = "parquet"

    @classmethod
    def read(cls, path: Path) -> Iterator[dict[str, Any]]:
        """The records a Parquet output holds: its journal's while one exists, else the file's."""
        journal = journal_path(path)
        if journal.exists():
            yield from read_jsonl(journal)
        elif path.exists():
            yield from read_parquet(path)

    def _journal(self) -> Path:
        journal = journal_path(self.path)
        if not journal.exists() and self.path.exists():  # a finished output resumed: its rows seed a new journal
            tmp = temp_beside(journal)
            with synced(tmp) as f:
                for rec in read_parquet(self.path):
                    f.write((json.dumps(rec, ensure_ascii=False, default=json_default) + "\n").encode())
            os.replace(tmp, journal)
        return journal

    def _finish(self) -> None:
        write_parquet(self.file, self.path)
        os.unlink(self.file)
        fsync_dir(self.path.parent)


# --- files, whatever the format ------------------------------------------------------------------


def lock_output(path: Path) -> IO[bytes]:
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


def repair_tail(file: Path) -> None:
    """Cut a torn last line (a crash in the middle of a write) back to the last newline."""
    size = file.stat().st_size if file.exists() else 0
    if size == 0:
        return
    with open(file, "r+b") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        pos, cut = size, 0
        while pos > 0 and not cut:
            start = max(0, pos - (1 << 16))
            f.seek(start)
            at = f.read(pos - start).rfind(b"\n")
            if at >= 0:
                cut = start + at + 1
            pos = start
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    log.warning("%s: cut off a torn last line (%d bytes) left by an interrupted run", file, size - cut)


def temp_beside(target: Path) -> Path:
    """The temporary file a rewrite of ``target`` goes to first: ``.NAME.tmp`` beside it."""
    return target.with_name(f".{target.name}.tmp")


@contextmanager
def synced(path: Path) -> Iterator[IO[bytes]]:
    """``path`` opened for writing, flushed and fsynced when the block ends without an error."""
    with open(path, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so a rename or removal in it survives a crash (where the platform can)."""
    with suppress(OSError):  # platforms without directory fds, or that cannot sync them
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
