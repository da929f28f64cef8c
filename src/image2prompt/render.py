"""Render results as text, weighted text, JSON, JSON Lines or CSV, written incrementally.

Shared by every front end (the command line, the server, reports). Each writer
writes one result as soon as it is given and flushes, so nothing already produced
is lost if a later input fails or the run is interrupted. No torch here.
"""

from __future__ import annotations

import csv
import json
import re
from typing import IO, Any

from .results import Analysis, Result
from .spreadsheet import spreadsheet_safe

__all__ = [
    "CHUNK_SEPARATOR", "CSV_COLUMNS", "FORMATS", "CsvWriter", "JsonWriter", "JsonlWriter", "ResultWriter",
    "TextWriter", "WeightedWriter", "escape_a1111", "format_analysis", "make_writer", "shows_similarity",
    "weighted_prompt",
]

FORMATS = ("text", "weighted", "json", "jsonl", "csv")
CSV_COLUMNS = ("source", "mode", "prompt", "caption", "similarity", "clip_model", "caption_model",
               "negative_prompt", "weak_match", "fingerprint")
#: The weak-match warning in words a person understands (CLI analysis, web UI).
WEAK_MATCH_WORDS = ("weak match: no style phrase stands out for this image; "
                    "treat every phrase as a guess.")
CHUNK_SEPARATOR = " BREAK "  # how A1111 and ComfyUI prompt front ends mark a new 75-token chunk

#: Formats that show the prompt's similarity to the image; the others need not compute it.
_SHOWS_SIMILARITY = frozenset({"json", "jsonl", "csv"})


def shows_similarity(fmt: str) -> bool:
    """True when ``fmt`` shows the final prompt's similarity (json, jsonl, csv).

    text and weighted do not, so fast and classic can skip the one text encode per
    image that computes it (``SearchSettings(score_prompt=shows_similarity(fmt))``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return fmt in _SHOWS_SIMILARITY


#: What A1111's prompt parser (modules/prompt_parser.py, ``re_attention``) reads as syntax
#: and takes literally after a backslash: emphasis ``( )``, de-emphasis ``[ ]``, and ``\\`` itself.
_A1111_SPECIAL = re.compile(r"([\\()\[\]])")


def escape_a1111(text: str) -> str:
    """``text`` as a literal in an A1111 prompt: ``walt disney (1937)`` -> ``walt disney \\(1937\\)``.

    Unescaped, the parentheses would emphasise (or, unbalanced, swallow) the words around
    them. A colon needs no escape: only ``:NUMBER)`` right before a closing parenthesis is a weight.
    """
    return _A1111_SPECIAL.sub(r"\\\1", text)


def weighted_prompt(result: Any) -> str:
    """The prompt with A1111-style emphasis, ``(phrase:1.15)``, from each phrase's ``weight``.

    Phrases with weight 1.0 stay plain; the caption is never weighted. Every literal
    parenthesis, bracket and backslash (in phrases and caption alike) is escaped
    (:func:`escape_a1111`), so A1111 reads only the weights written here.
    """
    prompt: str = result.prompt
    caption = result.caption or ""
    head, tail = (prompt[: len(caption)], prompt[len(caption):]) if prompt.startswith(caption) else ("", prompt)
    out, pos = [], 0
    for p in result.phrases:
        at = tail.find(p.text, pos)
        if at < 0:
            continue
        out.append(escape_a1111(tail[pos:at]))
        text = escape_a1111(p.text)
        out.append(text if p.weight == 1.0 else f"({text}:{p.weight:.2f})")
        pos = at + len(p.text)
    out.append(escape_a1111(tail[pos:]))
    return escape_a1111(head) + "".join(out)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class ResultWriter:
    """Base writer: ``write`` each result, then ``close`` (which does not close the stream)."""

    def __init__(self, stream: IO[str], single: bool) -> None:
        self.stream = stream
        self.single = single
        self.count = 0
        self.closed = False

    def write(self, result: Result) -> None:
        self._write(result)
        self.count += 1
        self.stream.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._close()
            self.stream.flush()

    def _write(self, result: Result) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close(self) -> None:
        pass


class TextWriter(ResultWriter):
    """The prompt alone for a single input, else ``SOURCE<TAB>PROMPT`` per line.

    A paired negative prompt follows as ``Negative prompt: ...`` (one input) or a
    third column; chunked prompts are joined with `` BREAK ``.
    """

    def render(self, result: Result) -> str:
        return CHUNK_SEPARATOR.join(result.chunks) if result.chunks else result.prompt

    def render_negative(self, negative: Result) -> str:
        return negative.prompt

    def _write(self, result: Result) -> None:
        prompt = self.render(result)
        negative = self.render_negative(result.negative) if result.negative is not None else None
        if self.single:
            self.stream.write(prompt + "\n")
            if negative is not None:
                self.stream.write(f"Negative prompt: {negative}\n")
        else:
            cols = [_one_line(result.source or ""), _one_line(prompt)]
            if negative is not None:
                cols.append(_one_line(negative))
            self.stream.write("\t".join(cols) + "\n")


class WeightedWriter(TextWriter):
    """Like text, with A1111 emphasis ``(phrase:1.15)`` from each phrase's weight; the
    negative prompt is unweighted, its literal parentheses and brackets escaped too."""

    def render(self, result: Result) -> str:
        return weighted_prompt(result)

    def render_negative(self, negative: Result) -> str:
        return escape_a1111(negative.prompt)


class JsonWriter(ResultWriter):
    """One JSON object for a single input, else a JSON list written item by item."""

    def __init__(self, stream: IO[str], single: bool) -> None:
        super().__init__(stream, single)
        if not single:
            self.stream.write("[\n")
            self.stream.flush()

    def _write(self, result: Result) -> None:
        text = json.dumps(result.to_dict(), ensure_ascii=False, indent=2)
        if self.single:
            self.stream.write(text + "\n")
        else:
            self.stream.write((",\n" if self.count else "") + text)

    def _close(self) -> None:
        if not self.single:
            self.stream.write(("\n" if self.count else "") + "]\n")


class JsonlWriter(ResultWriter):
    """One JSON object per line."""

    def _write(self, result: Result) -> None:
        self.stream.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")


class CsvWriter(ResultWriter):
    """A header row, then one row per result (the columns of :data:`CSV_COLUMNS`); no cell starts
    a formula (:func:`image2prompt.spreadsheet.spreadsheet_safe`)."""

    def __init__(self, stream: IO[str], single: bool) -> None:
        super().__init__(stream, single)
        self._csv = csv.writer(stream, lineterminator="\n")
        self._csv.writerow(CSV_COLUMNS)
        self.stream.flush()

    def _write(self, result: Result) -> None:
        row: dict[str, Any] = result.to_dict()
        row["negative_prompt"] = result.negative.prompt if result.negative is not None else None
        self._csv.writerow(["" if row.get(c) is None else spreadsheet_safe(row[c]) for c in CSV_COLUMNS])


_WRITERS: dict[str, type[ResultWriter]] = {
    "text": TextWriter, "weighted": WeightedWriter, "json": JsonWriter, "jsonl": JsonlWriter, "csv": CsvWriter,
}


def make_writer(fmt: str, stream: IO[str], single: bool) -> ResultWriter:
    """A writer for ``fmt`` (one of :data:`FORMATS`). ``single``: the caller named one image (the CLI: one
    file or URL, not a folder or glob), so text is the prompt alone and JSON one object; else lines and
    an array, whatever number of results follow."""
    try:
        return _WRITERS[fmt](stream, single)
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}") from None


def _below_floor(p: Any, floor: float | None) -> bool:
    return floor is not None and p.support is not None and p.support < floor


def format_analysis(analysis: Analysis) -> str:
    """Human-readable analysis: each category with its top phrases and scores."""
    lines: list[str] = []
    if analysis.source:
        lines.append(f"source: {analysis.source}")
    lines.append(f"clip model: {analysis.clip_model}")
    if analysis.caption:
        lines.append(f"caption: {analysis.caption}")
    every = [p for ps in analysis.categories.values() for p in ps]
    width = max((len(f"{p.score:.4f}") for p in every), default=0)
    for category, phrases in analysis.categories.items():
        lines += ["", f"{category}:"]
        for p in phrases:
            note = "  (hypothesis)" if p.hypothesis else ""
            if _below_floor(p, analysis.floor):
                note += "  (below floor)"
            margin = f"  {p.margin:+.4f} vs median" if p.margin is not None else ""
            lines.append(f"  {p.score:>{width}.4f}{margin}  {p.text}{note}")
    if any(p.hypothesis for p in every):
        lines += ["", "(hypothesis): the image resembles work tagged with this name; it does not say who made it."]
    if any(_below_floor(p, analysis.floor) for p in every):
        lines += ["", f"(below floor): its support is under {analysis.floor:g} (its margin over its category's median, "
                      f"in standard deviations of the image's scores over the whole vocabulary): the image does not "
                      f"support it on its own, and --floor {analysis.floor:g} keeps it out of prompts."]
    if analysis.weak_match:
        lines += ["", WEAK_MATCH_WORDS]
    return "\n".join(lines) + "\n"
