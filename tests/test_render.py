"""Result renderers (image2prompt.render), without models."""

from __future__ import annotations

import csv
import io
import json

import pytest

import image2prompt.prompt
from image2prompt.render import (
    CHUNK_SEPARATOR,
    CSV_COLUMNS,
    FORMATS,
    format_analysis,
    make_writer,
    shows_similarity,
    weighted_prompt,
)
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


def test_text_chunks_and_negative() -> None:
    r = result(0)
    r.chunks = ["a cat 0", "oil painting"]
    r.negative = Result(prompt="blurry, ugly", mode="negative", caption=None, similarity=None,
                        clip_model="ViT-L-14/openai", caption_model=None)
    out = io.StringIO()
    w = make_writer("text", out, single=True)
    w.write(r)
    assert out.getvalue() == f"a cat 0{CHUNK_SEPARATOR}oil painting\nNegative prompt: blurry, ugly\n"
    out = io.StringIO()
    w = make_writer("text", out, single=False)
    r.source = "a\nb.png"
    w.write(r)
    assert out.getvalue() == "a b.png\ta cat 0 BREAK oil painting\tblurry, ugly\n"


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
    assert [json.loads(line)["source"] for line in out.getvalue().splitlines()] == ["img0.png", "img1.png"]


def test_csv_rows() -> None:
    out = io.StringIO()
    w = make_writer("csv", out, single=False)
    r = result(0)
    r.caption = 'a "quoted", caption'
    r.caption_model = None
    w.write(r)
    r2 = result(1)
    r2.fingerprint = "0123abcd"
    w.write(r2)
    w.close()
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == ["source", "mode", "prompt", "caption", "similarity", "clip_model", "caption_model",
                       "negative_prompt", "weak_match", "fingerprint"]
    assert rows[0] == list(CSV_COLUMNS)
    assert rows[1] == ["img0.png", "fast", "a cat 0, oil painting", 'a "quoted", caption', "0.25",
                       "ViT-L-14/openai", "", "", "False", ""]
    assert rows[2][-1] == "0123abcd"


def test_csv_cells_never_start_a_formula() -> None:
    out = io.StringIO()
    w = make_writer("csv", out, single=False)
    r = result(0)
    r.source = "=HYPERLINK(\"http://x\",\"y\").png"
    r.prompt = "-2+3, oil painting"
    r.caption = "@SUM(A1)"
    r.caption_model = "+cmd"
    r.clip_model = "\tclip"
    r.similarity = -0.25  # a number stays a number
    w.write(r)
    w.close()
    row = dict(zip(CSV_COLUMNS, next(iter(list(csv.reader(io.StringIO(out.getvalue())))[1:]))))
    assert row["source"] == "'=HYPERLINK(\"http://x\",\"y\").png"
    assert row["prompt"] == "'-2+3, oil painting" and row["caption"] == "'@SUM(A1)"
    assert row["caption_model"] == "'+cmd" and row["clip_model"] == "'\tclip"
    assert row["similarity"] == "-0.25" and row["mode"] == "fast"


def test_weighted_prompt() -> None:
    r = Result(prompt="a cat, oil painting, bokeh, moody", mode="best", caption="a cat", similarity=0.3,
               clip_model="m", caption_model=None,
               phrases=[Phrase("oil painting", "mediums", 0.3, weight=1.15), Phrase("bokeh", "flavors", 0.2),
                        Phrase("moody", "flavors", 0.1, weight=0.9)])
    assert weighted_prompt(r) == "a cat, (oil painting:1.15), bokeh, (moody:0.90)"
    out = io.StringIO()
    w = make_writer("weighted", out, single=True)
    w.write(r)
    assert out.getvalue() == "a cat, (oil painting:1.15), bokeh, (moody:0.90)\n"


def test_weighted_prompt_escapes_a1111_syntax() -> None:
    # A1111's prompt parser (modules/prompt_parser.py) reads ( ) [ ] as emphasis, and each of them
    # and the backslash literally after a backslash; 629 of the reference's flavors hold parentheses.
    r = Result(prompt="a cat (tabby), walt disney (1937), ( ( dither ) ), back\\slash [v2], 16:9",
               mode="best", caption="a cat (tabby)", similarity=0.3, clip_model="m", caption_model=None,
               phrases=[Phrase("walt disney (1937)", "artists", 0.3, weight=0.95),
                        Phrase("( ( dither ) )", "flavors", 0.2, weight=1.15),
                        Phrase("back\\slash [v2]", "flavors", 0.1), Phrase("16:9", "flavors", 0.1, weight=1.1)])
    want = ("a cat \\(tabby\\), (walt disney \\(1937\\):0.95), (\\( \\( dither \\) \\):1.15), "
            "back\\\\slash \\[v2\\], (16:9:1.10)")
    assert weighted_prompt(r) == want
    r.negative = Result(prompt="blurry (motion), [bad]", mode="negative", caption=None, similarity=None,
                        clip_model="m", caption_model=None)
    out = io.StringIO()
    make_writer("weighted", out, single=True).write(r)
    assert out.getvalue() == f"{want}\nNegative prompt: blurry \\(motion\\), \\[bad\\]\n"
    out = io.StringIO()
    make_writer("text", out, single=True).write(r)  # plain text stays as it is
    assert out.getvalue() == f"{r.prompt}\nNegative prompt: blurry (motion), [bad]\n"


def test_weighted_prompt_has_one_home() -> None:
    # it moved out of image2prompt.prompt (a lower layer may not import render): no second definition
    assert weighted_prompt.__module__ == "image2prompt.render"
    assert not hasattr(image2prompt.prompt, "weighted_prompt")
    from image2prompt.prompt import assemble

    assert not hasattr(assemble, "weighted_prompt")


def test_shows_similarity() -> None:
    assert [f for f in FORMATS if shows_similarity(f)] == ["json", "jsonl", "csv"]
    assert not shows_similarity("text") and not shows_similarity("weighted")
    with pytest.raises(ValueError, match="unknown format"):
        shows_similarity("yaml")
    with pytest.raises(ValueError, match="unknown format"):
        make_writer("yaml", io.StringIO(), single=True)


def test_format_analysis() -> None:
    a = Analysis({"artists": [Phrase("by Claude Monet", "artists", 0.2431, True)],
                  "mediums": [Phrase("an oil painting", "mediums", 0.3, False)]}, "ViT-L-14/openai")
    text = format_analysis(a)
    assert "artists:\n  0.2431  by Claude Monet  (hypothesis)\n" in text
    assert "mediums:\n  0.3000  an oil painting\n" in text
    assert text.endswith("it does not say who made it.\n")


def test_render_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, image2prompt.render; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
