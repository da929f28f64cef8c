"""The record writer's protocol, and what every format's writer shares.

:class:`RecordWriter` names what the batch engine, the Ray driver and the failure manifest use
of a writer. :class:`LineWriter` implements it for an output that is a journal of one record per
line (a JSONL file, a CSV file, a Parquet output's ``FILE.journal.jsonl``): it opens and locks the
file, cuts a torn tail, scans what is there into a :class:`RecordIndex`, appends and syncs, and
rewrites the file without its errors. A format's writer (:mod:`.jsonl`, :mod:`.csvfile`,
:mod:`.parquet`) says only how its lines are written and read, and what it does on opening and closing.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

from .files import lock_output, repair_tail, replace, synced, temp_beside


class RecordWriter(Protocol):
    """Appends records to an output and knows what it already holds (:func:`~.open_output` makes one).

    ``write(record)`` appends and flushes one record; ``close()`` syncs (and, for Parquet, writes
    the Parquet file); ``abort()`` closes without finishing. What the output held when it was
    opened, and everything written since, is indexed: :meth:`done_keys`, :meth:`has_source`,
    :meth:`has_key`, :meth:`find` (the first record with a content hash, read back from the file),
    :meth:`has_scores`, :meth:`error_sources` and :meth:`error_fingerprints`.
    """

    path: Path
    format: str
    count: int  # records written since opening
    closed: bool

    def done_keys(self) -> set[tuple[str, str]]:
        """The keys (:func:`~.record_key`) of every record the output holds."""
        ...

    def has_source(self, source: str, fingerprint: str, content_hash: str | None = None) -> bool:
        """True when a record of ``fingerprint`` is for ``source`` (with this content hash, or none)."""
        ...

    def has_key(self, key: tuple[str, str]) -> bool:
        """True when a record has this key (:func:`~.record_key`)."""
        ...

    def find(self, content_hash: str, fingerprint: str) -> dict[str, Any] | None:
        """The first record with this content hash and fingerprint, read back from the file."""
        ...

    def has_scores(self, content_hash: str, fingerprint: str) -> bool:
        """True when an ok record with this content hash and fingerprint has scores (``--store-scores``)."""
        ...

    def error_sources(self, fingerprint: str) -> list[str]:
        """The sources of the error records of ``fingerprint``, in file order."""
        ...

    def error_fingerprints(self) -> list[str]:
        """The fingerprints that error records (still failing inputs) are under."""
        ...

    def write(self, record: dict[str, Any]) -> None:
        """Append one record and flush it (fsync every ``fsync_every`` records or ``fsync_seconds``)."""
        ...

    def sync(self) -> None:
        """Flush and fsync what was written."""
        ...

    def drop_errors(self, fingerprint: str | None = None, keep: list[dict[str, Any]] | None = None) -> int:
        """Rewrite the output without its error records (of ``fingerprint``, or all), atomically;
        how many were dropped (appended to ``keep``, when given)."""
        ...

    def close(self) -> None:
        """Sync; for Parquet, write the Parquet file (atomically) and remove the journal."""
        ...

    def abort(self) -> None:
        """Close the files without finishing (a Parquet output keeps its journal for a resume)."""
        ...

    def __enter__(self) -> RecordWriter: ...

    def __exit__(self, exc_type: Any, *_: Any) -> None: ...


class RecordIndex:
    """What an output holds, by key: where the first record of each (content hash, fingerprint)
    is, the sources and hashless keys seen, which records kept scores, and which sources still fail.

    ``norm`` maps a source to the form its file stores (a CSV cell), so that a source looked up
    matches the one read back.
    """

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

    def clear(self) -> None:
        self.by_hash.clear()
        self.sources.clear()
        self.hashless.clear()
        self.scored.clear()
        self.errors.clear()


class LineWriter:
    """A :class:`RecordWriter` over a journal of one record per line; a format's writer subclasses it.

    A format's writer says how its outputs are read (:meth:`read`), and fills the hooks:
    :meth:`_encode` and :meth:`_decode` (one line), :meth:`_lines` (the records of an open file,
    with their offsets, from where a scan starts), :meth:`_journal` (the file appended to),
    :meth:`_start` (after opening), :meth:`_copy_head` (what a rewrite keeps before the
    records), :meth:`_finish` (on close) and :meth:`_norm` (a source as the file stores it).
    """

    format: str  # the format's name (FORMATS)

    def __init__(self, path: str | os.PathLike[str], *, fsync_every: int = 64, fsync_seconds: float = 5.0) -> None:
        self.path = Path(path)
        self.fsync_every = max(1, int(fsync_every))
        self.fsync_seconds = float(fsync_seconds)
        self.count = 0  # records written since opening
        self.closed = False
        self._index = RecordIndex(self._norm)
        self._unsynced = 0
        self._synced_at = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = lock_output(self.path)  # one writer per output: two would interleave their records
        self.file = self._journal()
        repair_tail(self.file)
        self._scan()
        self._out: IO[bytes] = open(self.file, "ab")
        self._size = self._out.seek(0, io.SEEK_END)
        self._start()
        self._reader: IO[bytes] | None = None

    @classmethod
    def read(cls, path: Path) -> Iterator[dict[str, Any]]:
        """The records an output of this format at ``path`` holds, in file order (:func:`~.read_records`)."""
        raise NotImplementedError

    # -- the format's hooks ----------------------------------------------------------------
    def _encode(self, record: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def _decode(self, line: bytes) -> dict[str, Any] | None:
        raise NotImplementedError

    def _lines(self, f: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
        raise NotImplementedError

    def _journal(self) -> Path:
        return self.path

    def _start(self) -> None:
        pass

    def _copy_head(self, src: IO[bytes], dst: IO[bytes]) -> None:
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

    # -- writing ------------------------------------------------------------------------
    def write(self, record: dict[str, Any]) -> None:
        """Append one record and flush it (fsync every ``fsync_every`` records or ``fsync_seconds``)."""
        if self.closed:
            raise ValueError("write to a closed RecordWriter")
        line = self._encode(record)
        offset = self._size
        self._append(line)
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
        if self._reader is not None:
            self._reader.close()
            self._reader = None
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
        replace(tmp, self.file, sync_dir=True)
        self._index.clear()
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
            self._finish()
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

    def __enter__(self) -> LineWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- internals ------------------------------------------------------------------------
    def _append(self, line: bytes) -> None:
        self._out.write(line)
        self._out.flush()
        self._size += len(line)

    def _scan(self) -> None:
        """Index what the file holds (on opening, and after a rewrite)."""
        if not self.file.exists():
            return
        with open(self.file, "rb") as f:
            for offset, rec in self._lines(f):
                self._index.add(offset, rec)
