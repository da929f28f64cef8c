"""Batch records and outputs: schema, flattening, journals, torn tails, Parquet from the journal."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from image2prompt.batch.records import (
    FLAT_COLUMNS,
    OutputError,
    copy_record,
    flatten_record,
    format_for,
    journal_path,
    make_record,
    open_output,
    read_records,
    record_key,
)
from image2prompt.results import Phrase, Result, Trace

FP = "f" * 16


def result(prompt: str = "a cat, oil painting", trace: bool = False) -> Result:
    return Result(prompt=prompt, mode="fast", caption="a cat", similarity=0.25, clip_model="clip",
                  caption_model=None, phrases=[Phrase("oil painting", "mediums", 0.3)], source="x",
                  specificity=1.0, rejected=[Phrase("masterpiece", "flavors", 0.2, margin=0.01, support=0.1)],
                  negative=Result(prompt="blurry", mode="negative", caption=None, similarity=0.1,
                                  clip_model="clip", caption_model=None),
                  trace=Trace(top={"mediums": [Phrase("oil painting", "mediums", 0.3)]}) if trace else None,
                  fingerprint=FP)


def test_make_record_schema() -> None:
    ok = make_record("a.png", "h1", FP, result(trace=True), None)
    assert list(ok) == ["source", "content_hash", "fingerprint", "ok", "result"]
    assert ok["ok"] and ok["result"]["prompt"] == "a cat, oil painting" and ok["result"]["source"] == "a.png"
    assert "trace" not in ok["result"]
    assert make_record("a.png", "h1", FP, result(trace=True), None, scores=True)["result"]["trace"]["top"]
    bad = make_record("b.png", None, FP, None, "b.png: not an image\n  (details)")
    assert bad == {"source": "b.png", "content_hash": None, "fingerprint": FP, "ok": False,
                   "error": "b.png: not an image (details)"}
    assert record_key(ok) == ("h1", FP) and record_key(bad) == ("b.png", FP)
    json.dumps(ok)


def test_copy_record_takes_the_new_source() -> None:
    ok = copy_record(make_record("a.png", "h", FP, result(), None), "b.png")
    assert ok["source"] == "b.png" and ok["result"]["source"] == "b.png"
    err = copy_record(make_record("a.png", "h", FP, None, "a.png: not an image"), "dir/c.png")
    assert err["error"] == "dir/c.png: not an image"


def test_flatten_record() -> None:
    row = flatten_record(make_record("a.png", "h", FP, result(trace=True), None, scores=True))
    assert tuple(row) == FLAT_COLUMNS
    assert row["prompt"] == "a cat, oil painting" and row["negative_prompt"] == "blurry"
    assert row["similarity"] == 0.25 and row["mode"] == "fast" and row["ok"] is True
    assert json.loads(row["phrases"])[0]["text"] == "oil painting"
    assert json.loads(row["trace"])["top"]["mediums"][0]["score"] == 0.3
    assert row["specificity"] == 1.0 and json.loads(row["rejected"])[0]["support"] == 0.1
    assert flatten_record(row) == row  # flat records pass through
    err = flatten_record(make_record("b.png", None, FP, None, "b.png: bad"))
    assert err["ok"] is False and err["error"] == "b.png: bad" and err["prompt"] is None


def test_format_for() -> None:
    assert format_for("x.JSONL") == "jsonl" and format_for("x.csv") == "csv" and format_for("x.parquet") == "parquet"
    assert format_for("x.txt", "csv") == "csv"
    with pytest.raises(OutputError, match="extension"):
        format_for("x.txt")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_write_resume_and_read_back(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"out.{fmt}"
    with open_output(out) as w:
        w.write(make_record("a.png", "h1", FP, result(), None))
        w.write(make_record("b.png", "h2", FP, None, "b.png: bad"))
        if fmt == "parquet":
            assert journal_path(out).exists() and not out.exists()
    if fmt == "parquet":
        assert out.exists() and not journal_path(out).exists()
    w = open_output(out)
    assert w.done_keys() == {("h1", FP), ("h2", FP)}
    assert w.has_source("a.png", FP, "h1") and not w.has_source("a.png", FP, "h2")
    assert w.error_sources(FP) == ["b.png"]
    first = w.find("h1", FP)
    assert first is not None and first["ok"] and first["source"] == "a.png"
    w.write(copy_record(first, "c.png"))
    w.write(make_record("d.png", None, FP, None, "d.png: no such file"))
    w.close()
    records = list(read_records(out))
    assert [r["source"] for r in records] == ["a.png", "b.png", "c.png", "d.png"]
    assert [r["ok"] for r in records] == [True, False, True, False]
    prompts = [r["result"]["prompt"] if "result" in r else r.get("prompt") for r in records]
    assert prompts[0] == prompts[2] == "a cat, oil painting"
    assert open_output(out).done_keys() == {("h1", FP), ("h2", FP), ("d.png", FP)}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_torn_last_line_is_cut_off(tmp_path: Path, fmt: str, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / f"out.{fmt}"
    with open_output(out) as w:
        w.write(make_record("a.png", "h1", FP, result(), None))
    whole = out.read_bytes()
    with open(out, "ab") as f:
        f.write(b'{"source": "b.png", "content_ha' if fmt == "jsonl" else b'b.png,h2,ffff,tr')
    with caplog.at_level(logging.WARNING, logger="image2prompt"):
        w = open_output(out)
    assert out.read_bytes() == whole
    assert len([r for r in caplog.records if "torn" in r.getMessage()]) == 1
    assert w.done_keys() == {("h1", FP)}
    w.write(make_record("b.png", "h2", FP, result(), None))
    w.close()
    assert [r["source"] for r in read_records(out)] == ["a.png", "b.png"]


def test_drop_errors_rewrites_without_them(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    w = open_output(out)
    w.write(make_record("a.png", "h1", FP, result(), None))
    w.write(make_record("b.png", "h2", FP, None, "b.png: bad"))
    w.write(make_record("c.png", "h3", "other", None, "c.png: bad"))
    assert w.drop_errors(FP) == 1
    assert w.done_keys() == {("h1", FP), ("h3", "other")} and w.error_sources(FP) == []
    w.write(make_record("b.png", "h2", FP, result(), None))
    w.close()
    assert [(r["source"], r["ok"]) for r in read_records(out)] == [("a.png", True), ("c.png", False), ("b.png", True)]
    assert not list(tmp_path.glob(".*tmp"))


def test_an_error_that_later_worked_leaves_the_failure_list(tmp_path: Path) -> None:
    w = open_output(tmp_path / "out.jsonl")
    w.write(make_record("a.png", None, FP, None, "a.png: no such file"))
    w.write(make_record("a.png", "h1", FP, result(), None))
    assert w.error_sources(FP) == []


def test_csv_of_another_tool_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    out.write_text("name,prompt\nx,y\n", encoding="utf-8")
    with pytest.raises(OutputError, match="columns"):
        open_output(out)


def test_csv_of_an_earlier_version_is_resumed_with_its_own_columns(tmp_path: Path) -> None:
    """Outputs written before ``specificity`` and ``rejected`` existed keep their header: a
    resumed run appends rows of the same shape, and reading gives every row."""
    import csv

    out = tmp_path / "out.csv"
    old = [c for c in FLAT_COLUMNS if c not in ("specificity", "rejected")]
    row = flatten_record(make_record("a.png", "h1", FP, result(), None))
    with open(out, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(old)
        writer.writerow(["" if row[c] is None else row[c] for c in old])
    with open_output(out) as w:
        assert w.done_keys() == {("h1", FP)}
        w.write(make_record("b.png", "h2", FP, result(), None))
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(old) and len(lines) == 3
    assert len(next(csv.reader([lines[2]]))) == len(old)
    assert [r["source"] for r in read_records(out)] == ["a.png", "b.png"]


def test_csv_rows_stay_on_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    with open_output(out) as w:
        w.write(make_record("two\nlines.png", "h1", FP, result("a\nb"), None))
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2
    (row,) = read_records(out)
    assert row["prompt"] == "a b" and row["ok"] is True and row["similarity"] == 0.25
    assert open_output(out).has_source("two\nlines.png", FP, "h1")


def test_parquet_killed_run_keeps_the_journal_and_a_finished_one_is_seeded(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "out.parquet"
    w = open_output(out)
    w.write(make_record("a.png", "h1", FP, result(), None))
    w.abort()  # as if the process died: no Parquet yet, the journal holds the record
    assert not out.exists() and journal_path(out).exists()
    with open_output(out) as w:
        assert w.done_keys() == {("h1", FP)}
        w.write(make_record("b.png", "h2", FP, None, "b.png: bad"))
    table = pq.read_table(out)
    assert table.column_names == list(FLAT_COLUMNS) and table.num_rows == 2
    with open_output(out) as w:  # a finished output seeds a new journal
        assert w.done_keys() == {("h1", FP), ("h2", FP)}
        stored = w.find("h1", FP)
        assert stored is not None and stored["prompt"] == "a cat, oil painting"
        w.write(copy_record(stored, "c.png"))
    rows = pq.read_table(out).to_pylist()
    assert [r["source"] for r in rows] == ["a.png", "b.png", "c.png"]
    assert rows[2]["prompt"] == rows[0]["prompt"] and rows[2]["ok"] is True


def test_a_second_writer_of_the_same_output_is_refused_until_the_first_closes(tmp_path):
    from image2prompt.batch.records import OutputError, open_output

    out = tmp_path / "out.jsonl"
    first = open_output(out)
    with pytest.raises(OutputError, match="another run is writing this output"):
        open_output(out)
    first.close()
    open_output(out).close()  # free again


@pytest.mark.parametrize("link", ["folder", "file"])
def test_the_lock_is_the_real_files_whatever_path_names_it(tmp_path, link):
    real = tmp_path / "real"
    real.mkdir()
    out = real / "out.jsonl"
    out.touch()
    if link == "folder":  # the same output through a linked folder
        (tmp_path / "alias").symlink_to(real, target_is_directory=True)
        other = tmp_path / "alias" / "out.jsonl"
    else:  # or through a link to the file
        other = tmp_path / "other.jsonl"
        other.symlink_to(out)
    first = open_output(out)
    with pytest.raises(OutputError, match="another run is writing this output"):
        open_output(other)
    first.write(make_record("a.png", "h1", FP, result(), None))
    first.close()
    with open_output(other) as second:  # free again, and it sees what the first wrote
        assert second.has_key(("h1", FP))


def test_csv_cells_never_start_a_formula_and_read_back_as_written(tmp_path):
    import csv

    from image2prompt.batch.records import records_bytes

    r = result(prompt="-2+3, oil painting")
    r.caption = "@SUM(A1)"
    ok = make_record("=cmd|' /C calc'!A0.png", "h1", FP, r, None)
    bad = make_record("+x.png", "h2", FP, None, "+x.png: not an image")
    quoted = make_record("'=already quoted.png", "h3", FP, result(prompt="\tsharp"), None)
    out = tmp_path / "out.csv"
    with open_output(out) as w:
        for rec in (ok, bad, quoted):
            w.write(rec)
    for data in (out.read_bytes(), records_bytes([ok, bad, quoted], "csv")):  # the batch file, the server download
        rows = list(csv.DictReader(data.decode().splitlines()))
        assert [row["source"] for row in rows] == ["'=cmd|' /C calc'!A0.png", "'+x.png", "''=already quoted.png"]
        assert rows[0]["prompt"] == "'-2+3, oil painting" and rows[0]["caption"] == "'@SUM(A1)"
        assert rows[1]["error"] == "'+x.png: not an image" and rows[2]["prompt"] == "'\tsharp"
        cells = [cell for row in rows for cell in row.values() if cell]
        assert not any(cell[0] in "=+-@\t\r" for cell in cells)
    back = list(read_records(out))
    assert [b["source"] for b in back] == ["=cmd|' /C calc'!A0.png", "+x.png", "'=already quoted.png"]
    assert back[0]["prompt"] == "-2+3, oil painting" and back[1]["error"] == "+x.png: not an image"
    with open_output(out) as w:  # resume: the sources are known as written
        assert w.has_source("=cmd|' /C calc'!A0.png", FP, "h1") and w.error_sources(FP) == ["+x.png"]


@pytest.mark.parametrize(("name", "fmt", "kind"), [("out.jsonl", None, "JsonlWriter"), ("out.ndjson", None, "JsonlWriter"),
                                                    ("out.csv", None, "CsvWriter"), ("out.pq", None, "ParquetWriter"),
                                                    ("out.txt", "csv", "CsvWriter")])
def test_each_format_has_its_own_writer_and_every_one_does_what_the_protocol_names(tmp_path, name, fmt, kind):
    from image2prompt.batch import records

    with open_output(tmp_path / name, fmt) as w:
        assert type(w) is getattr(records, kind) and records.WRITERS[w.format] is type(w)
        operations = [n for n in vars(records.RecordWriter) if not n.startswith("_")]
        assert {"write", "find", "done_keys", "drop_errors", "close", "abort"} <= set(operations)
        assert all(callable(getattr(w, n)) for n in operations)
        assert all(hasattr(w, n) for n in records.RecordWriter.__annotations__)
        assert (w.path, w.count, w.closed) == (tmp_path / name, 0, False)
        w.write(make_record("a.png", "h1", FP, result(), None))
        assert w.count == 1
    assert w.closed
    assert [r["source"] for r in read_records(tmp_path / name, fmt)] == ["a.png"]


def test_an_unknown_format_is_refused_before_anything_is_made(tmp_path):
    from image2prompt.batch.records import record_line, records_bytes

    with pytest.raises(OutputError, match="extension"):
        open_output(tmp_path / "sub" / "out.txt")
    with pytest.raises(OutputError, match="unknown output format"):
        open_output(tmp_path / "sub" / "out.jsonl", "xml")
    assert not (tmp_path / "sub").exists()
    with pytest.raises(OutputError, match="unknown output format"):
        list(read_records(tmp_path / "out.jsonl", "xml"))
    with pytest.raises(OutputError, match="choose jsonl or csv"):
        record_line(make_record("a.png", "h1", FP, result(), None), "parquet")
    assert records_bytes([], "parquet") == b""
    with pytest.raises(TypeError):
        open_output(tmp_path / "out.jsonl", fsync_evry=1)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_records_bytes_are_the_lines_a_writer_appends(tmp_path, fmt):
    from image2prompt.batch.records import records_bytes

    recs = [make_record("a.png", "h1", FP, result(trace=True), None, scores=True),
            make_record("b\n.png", None, FP, None, "b.png: bad")]
    out = tmp_path / f"out.{fmt}"
    with open_output(out) as w:
        for rec in recs:
            w.write(rec)
    assert out.read_bytes() == records_bytes(recs, fmt)


def test_a_missing_output_reads_as_no_records(tmp_path):
    for name in ("none.jsonl", "none.csv", "none.parquet"):
        assert list(read_records(tmp_path / name)) == []
