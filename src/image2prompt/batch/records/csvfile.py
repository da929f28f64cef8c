"""CSV outputs: one flat record per line (:func:`~.flatten_record`), under a header of
:data:`~.FLAT_COLUMNS` (or an earlier version's columns, kept when such a file is resumed).

Every cell stays on one physical line (so offsets and the torn-tail repair work line by line)
and no cell reads as a spreadsheet formula (:mod:`image2prompt.spreadsheet`); reading undoes
that quoting and types the cells back.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ...spreadsheet import spreadsheet_safe, spreadsheet_value
from .base import LineWriter
from .schema import FLAT_COLUMNS, OutputError, flatten_record

log = logging.getLogger(__package__)

#: Earlier versions' CSV header (before ``specificity`` and ``rejected``): such an output is
#: still resumed, its new rows written with its own columns.
_OLD_CSV_HEADERS = (FLAT_COLUMNS[:16],)
_BOOL_COLUMNS = ("ok", "weak_match")
_FLOAT_COLUMNS = ("similarity", "specificity")
_INT_COLUMNS = ("token_count",)


# --- writing ----------------------------------------------------------------------------------


def csv_cell(value: Any) -> Any:
    """A CSV cell on one physical line (so every row is one line: offsets and torn-tail repair), that
    no spreadsheet reads as a formula (:func:`image2prompt.spreadsheet.spreadsheet_safe`)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and ("\n" in value or "\r" in value):
        value = " ".join(value.splitlines())
    return spreadsheet_safe(value)  # no cell starts a formula (read back by _typed)


def csv_line(cells: Iterable[Any]) -> bytes:
    """One CSV row, as the bytes of one line."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(list(cells))
    return buf.getvalue().encode("utf-8")


def csv_record_line(record: dict[str, Any], columns: Sequence[str] = FLAT_COLUMNS) -> bytes:
    """One record as one line of a CSV output: flattened to ``columns``."""
    row = flatten_record(record)
    return csv_line([csv_cell(row.get(c)) for c in columns])


# --- reading ----------------------------------------------------------------------------------


def csv_header(f: IO[bytes]) -> list[str] | None:
    """The header of a binary CSV stream at its start; None for an empty file."""
    line = f.readline()
    if not line.strip():
        return None
    return next(csv.reader([line.decode("utf-8-sig")]))


def csv_lines(f: IO[bytes], header: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(offset, record) per parsable row of a binary CSV stream after its header."""
    offset = f.tell()
    for line in f:
        start, offset = offset, offset + len(line)
        rec = parse_csv_line(line, header)
        if rec is not None:
            yield start, rec


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


def read_csv(path: Path) -> Iterator[dict[str, Any]]:
    """The typed flat records of a CSV file, in order (malformed rows skipped)."""
    with open(path, "rb") as f:
        header = csv_header(f)
        if header is None:
            return
        for _, rec in csv_lines(f, header):
            yield rec


class CsvWriter(LineWriter):
    """A CSV output: flat records appended as they come, under the header it has (or is given)."""

    format = "csv"
    _header: list[str] | None = None  # the file's columns, once read or written

    @classmethod
    def read(cls, path: Path) -> Iterator[dict[str, Any]]:
        """The records a CSV output holds (none when there is no file)."""
        if path.exists():
            yield from read_csv(path)

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
        yield from csv_lines(f, header)

    def _start(self) -> None:
        if self._size == 0:
            self._header = list(FLAT_COLUMNS)
            self._append(csv_line(FLAT_COLUMNS))

    def _copy_head(self, src: IO[bytes], dst: IO[bytes]) -> None:
        dst.write(src.readline())

    def _norm(self, source: str) -> str:
        return csv_cell(source)
