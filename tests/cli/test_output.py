"""Result writers, without models."""

from __future__ import annotations

import csv
import io
import json

import pytest

from image2prompt.cli.output import format_analysis, make_writer
from image2prompt.results import Analysis, Phrase, Result


def result(i: int) -> Result:
    return Result(prompt=f"a cat {i}, oil painting", mode="fast", caption=f"a cat {i}", similarity=0.25 + i,
                  clip_model="ViT-L-14/openai", caption_model="blip-large",
                  phrases=[Phrase("oil painting", "mediums", 0.2)], source=f"img{i}.png", token_count=6)


class Flushing(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def test_text_single_and_many() -> None:
    out = io.StringIO()
    w = make_writer("text", out, single=True)
    w.write(result(0))
    w.close()
    assert out.getvalue() == "a cat 0, oil painting\n"
    out = io.StringIO()
    w = make_writer("text", out, single=False)
    w.write(result(0))
    w.write(result(1))
    w.close()
    assert out.getvalue() == "img0.png\ta cat 0, oil painting\nimg1.png\ta cat 1, oil painting\n"


@pytest.mark.parametrize("n", [0, 1, 3])
def test_json_list_is_valid_for_any_count(n: int) -> None:
    out = io.StringIO()
    w = make_writer("json", out, single=False)
    for i in range(n):
        w.write(result(i))
    w.close()
    w.close()  # idempotent
    data = json.loads(out.getvalue())
    assert [d["source"] for d in data] == [f"img{i}.png" for i in range(n)]


def test_json_single_is_an_object() -> None:
    out = io.StringIO()
    w = make_writer("json", out, single=True)
    w.write(result(0))
    w.close()
    assert json.loads(out.getvalue())["phrases"][0]["category"] == "mediums"


def test_writers_flush_each_result() -> None:
    out = Flushing()
    w = make_writer("jsonl", out, single=False)
    w.write(result(0))
    assert out.flushes >= 1 and out.getvalue().count("\n") == 1
    w.write(result(1))
    assert out.flushes >= 2


def test_csv_rows() -> None:
    out = io.StringIO()
    w = make_writer("csv", out, single=False)
    r = result(0)
    r.caption = 'a "quoted", caption'
    r.caption_model = None
    w.write(r)
    w.close()
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == ["source", "mode", "prompt", "caption", "similarity", "clip_model", "caption_model",
                       "negative_prompt", "weak_match"]
    assert rows[1] == ["img0.png", "fast", "a cat 0, oil painting", 'a "quoted", caption', "0.25",
                       "ViT-L-14/openai", "", "", "False"]


def test_format_analysis() -> None:
    a = Analysis({"artists": [Phrase("by Claude Monet", "artists", 0.2431, True)],
                  "mediums": [Phrase("an oil painting", "mediums", 0.3, False)]}, "ViT-L-14/openai")
    text = format_analysis(a)
    assert "artists:\n  0.2431  by Claude Monet  (hypothesis)\n" in text
    assert "mediums:\n  0.3000  an oil painting\n" in text
