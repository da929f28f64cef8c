"""JSONL outputs: one nested record per line (also the journal a Parquet output is written from)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .base import LineWriter
from .schema import json_default

log = logging.getLogger(__package__)


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


def jsonl_lines(f: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(offset, record) per parsable line of a binary JSONL stream."""
    offset = f.tell()
    for line in f:
        start, offset = offset, offset + len(line)
        rec = parse_json_line(line)
        if rec is not None:
            yield start, rec


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a JSONL file, in order (unparsable lines skipped)."""
    with open(path, "rb") as f:
        for _, rec in jsonl_lines(f):
            yield rec


class JsonlWriter(LineWriter):
    """A JSONL output: records appended as they come, nested as :func:`~.make_record` makes them."""

    format = "jsonl"

    @classmethod
    def read(cls, path: Path) -> Iterator[dict[str, Any]]:
        """The records a JSONL output holds (none when there is no file)."""
        if path.exists():
            yield from read_jsonl(path)

    def _encode(self, record: dict[str, Any]) -> bytes:
        return jsonl_line(record)

    def _decode(self, line: bytes) -> dict[str, Any] | None:
        return parse_json_line(line)

    def _lines(self, f: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
        return jsonl_lines(f)
