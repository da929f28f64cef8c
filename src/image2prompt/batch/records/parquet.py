"""Parquet outputs: the records go to the JSONL journal ``FILE.journal.jsonl`` while a run
lasts (a Parquet file cannot be appended to), and closing writes the Parquet file from it
(pyarrow), atomically, and removes the journal. Opening a finished Parquet file again seeds a
new journal from it, so a resumed run appends. pyarrow is imported only here, and only when used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .files import fsync_dir, fsync_path, replace, synced, temp_beside
from .jsonl import JsonlWriter, read_jsonl
from .schema import FLAT_COLUMNS, OutputError, flatten_record, journal_path, json_default

#: Records read from the journal per Parquet row group.
_ROW_GROUP = 8192


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


def read_parquet(path: Path) -> Iterator[dict[str, Any]]:
    """The flat records of a Parquet file, in order."""
    pq = _parquet()
    f = pq.ParquetFile(path)
    for batch in f.iter_batches(batch_size=_ROW_GROUP):
        yield from batch.to_pylist()


def write_parquet(journal: Path, target: Path) -> None:
    """The Parquet file of the journal's records, written to a temporary file and moved into place."""
    pq = _parquet()
    import pyarrow as pa

    schema = _arrow_schema()
    tmp = temp_beside(target)
    writer = pq.ParquetWriter(tmp, schema)
    try:
        rows: list[dict[str, Any]] = []
        written = 0
        for rec in read_jsonl(journal):
            rows.append(flatten_record(rec))
            if len(rows) >= _ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                written, rows = written + len(rows), []
        if rows or not written:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    finally:
        writer.close()
    fsync_path(tmp)
    replace(tmp, target, sync_dir=False)


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
        if not journal.exists() and self.path.exists():
            self._seed_journal(journal)
        return journal

    def _seed_journal(self, journal: Path) -> None:
        """A finished Parquet output is being resumed: copy its rows into a new journal (atomically)."""
        tmp = temp_beside(journal)
        with synced(tmp) as f:
            for rec in read_parquet(self.path):
                f.write((json.dumps(rec, ensure_ascii=False, default=json_default) + "\n").encode())
        replace(tmp, journal, sync_dir=False)

    def _finish(self) -> None:
        write_parquet(self.file, self.path)
        os.unlink(self.file)
        fsync_dir(self.path.parent)
