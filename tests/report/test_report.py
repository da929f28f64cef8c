"""`image2prompt report` on the output of a real `batch` run, and the page in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from image2prompt.cli.main import cli
from tests.conftest import make_images
from tests.support.synthetic_records import records, write_jsonl

pytest.importorskip("matplotlib", reason="the report extra is not installed")

DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def batch_run(tiny_open_clip: Path, small_vocab_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-model batch run over two folders, with stored scores and features, and one broken file."""
    root = tmp_path_factory.mktemp("study")
    for i, im in enumerate(make_images(16)):
        folder = root / "photos" / ("warm" if i % 2 else "cool")
        folder.mkdir(parents=True, exist_ok=True)
        im.save(folder / f"{i}.png")
    (root / "photos" / "cool" / "broken.png").write_bytes(b"not an image")
    out = root / "out.jsonl"
    r = invoke("batch", root / "photos", "-o", out, "--clip", f"local-dir:{tiny_open_clip}", "--caption-model",
               "none", "--caption", "a picture", "--vocab", small_vocab_dir, "--device", "cpu", "--cache-dir",
               root / "emb", "--mode", "fast", "--store-scores", "3", "--store-features", root / "feats", "-q")
    assert r.exit_code == 1  # the broken file
    return root


def test_report_on_batch_output(batch_run: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(batch_run)  # the records name images relative to here
    r = invoke("report", "out.jsonl", "--html", "report.html", "--json", "summary.json", "--group-by", "folder",
               "--features", "feats")
    assert r.exit_code == 0, r.output
    summary = json.loads((batch_run / "summary.json").read_text())
    assert (summary["records"], summary["images"], summary["errors"]) == (17, 16, 1)
    assert summary["with_top_scores"] == 16
    assert set(summary["groups"]) == {"cool", "warm"}  # the folders, less their common parent
    assert set(summary["categories"]) >= {"artists", "flavors", "mediums", "movements"}
    for category, phrases in summary["categories"].items():
        assert phrases and all(0 < p["share"] <= 1 for p in phrases)
        assert all(p["hypothesis"] == (category == "artists") for p in phrases)  # names, marked as such
    assert "Benjamini-Hochberg" in summary["separating"]["method"]
    page = (batch_run / "report.html").read_text()
    for words in ("How to read this", "Scores are CLIP similarities", "Artist names are hypotheses",
                  "missing from the vocabulary", "What separates the groups", "Benjamini-Hochberg",
                  "Phrases that appear together", "Weak matches", "PCA of the image features of 16 images"):
        assert words in page, words
    # one self-contained file: every image is embedded, nothing is fetched
    assert not re.search(r"(src|href)=['\"]?(https?:|//|/)", page)
    assert page.count("data:image/png;base64,") >= 6
    assert "Traceback" not in r.output


def test_report_reads_csv_and_parquet_outputs(batch_run: Path, tiny_open_clip: Path, small_vocab_dir: Path,
                                               tmp_path: Path):
    pytest.importorskip("pyarrow")
    for ext in ("csv", "parquet"):
        out = tmp_path / f"out.{ext}"
        r = invoke("batch", batch_run / "photos", "-o", out, "--clip", f"local-dir:{tiny_open_clip}",
                   "--caption-model", "none", "--caption", "a picture", "--vocab", small_vocab_dir, "--device",
                   "cpu", "--cache-dir", batch_run / "emb", "--mode", "fast", "--store-scores", "3", "-q")
        assert r.exit_code == 1
        r = invoke("report", out, "--json", tmp_path / f"{ext}.json", "--group-by", "folder", "-q")
        assert r.exit_code == 0, r.output
        summary = json.loads((tmp_path / f"{ext}.json").read_text())
        assert summary["images"] == 16 and summary["with_top_scores"] == 16


def test_report_errors_are_one_line(tmp_path: Path):
    r = invoke("report", tmp_path / "none.jsonl", "--html", tmp_path / "r.html")
    assert r.exit_code == 1 and "none.jsonl: no such file" in r.output
    r = invoke("report", tmp_path / "none.jsonl")
    assert r.exit_code == 2 and "--html" in r.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"source": "a.png", "ok": false, "error": "a.png: not an image"}\n')
    r = invoke("report", empty, "--json", tmp_path / "s.json")
    assert r.exit_code == 1 and "no records with a result (1 records read, 1 errors)" in r.output


def test_the_page_renders_in_chromium(tmp_path: Path):
    """A synthetic study with a planted phrase, opened in headless Chromium: no console errors."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    data = write_jsonl(tmp_path / "study.jsonl", records(1500, {"paintings": 0.5, "photos": 0.5}, per_category=60,
                                                         planted={"visible brushstrokes": {"paintings": 0.4,
                                                                                           "photos": 0.05}}))
    r = invoke("report", data, "--html", tmp_path / "study.html", "--group-by", "folder", "-q")
    assert r.exit_code == 0, r.output
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((tmp_path / "study.html").as_uri())
            page.wait_for_load_state("load")
            assert page.locator("h1").inner_text() == "How CLIP sees this collection"
            assert page.locator("text=visible brushstrokes").count() >= 1
            sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
            assert sizes and all(done and width > 0 for done, width in sizes)  # every embedded figure decoded
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=False)
            assert shot.stat().st_size > 10_000
            if os.environ.get("IMAGE2PROMPT_UPDATE_SCREENSHOTS"):
                shutil.copy(shot, DOCS / "report.png")
        finally:
            browser.close()
    assert errors == []


def test_a_change_of_settings_does_not_count_the_images_twice(batch_run: Path, tiny_open_clip: Path,
                                                               small_vocab_dir: Path, tmp_path: Path):
    """batch appends a record per image for each fingerprint: the report counts each image once."""
    out = tmp_path / "out.jsonl"
    shutil.copy(batch_run / "out.jsonl", out)
    first = json.loads(out.read_text().splitlines()[0])["fingerprint"]
    r = invoke("batch", batch_run / "photos", "-o", out, "--clip", f"local-dir:{tiny_open_clip}", "--caption-model",
               "none", "--caption", "a picture", "--vocab", small_vocab_dir, "--device", "cpu", "--cache-dir",
               batch_run / "emb", "--mode", "classic", "--store-scores", "8", "-q")  # K = every phrase of 8
    assert len(out.read_text().splitlines()) == 34, r.output  # 16 images and the broken file, twice
    r = invoke("report", out, "--json", tmp_path / "s.json", "--html", tmp_path / "r.html", "--group-by", "folder")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["records"], summary["images"], summary["errors"]) == (34, 16, 1)
    assert summary["left_out"]["repeats"] == 17 and sum(g["images"] for g in summary["groups"].values()) == 16
    said = [line for line in r.output.splitlines() if "Left out" in line]
    assert len(said) == 1 and "34 records read, 16 images counted. Left out 17 earlier records" in said[0]
    assert "Left out 17 earlier records" in (tmp_path / "r.html").read_text()
    # K = 8 holds all 8 phrases of these categories: every share is 100%, and the report says so
    assert all(p["share"] == 1 for p in summary["categories"]["mediums"])
    warned = {w.split(":")[0] for w in summary["warnings"]}
    assert warned == {"mediums", "movements"}  # artists ("by X", "inspired by X") and flavors have more
    assert sum("mean nothing" in line for line in r.output.splitlines()) == 2
    # --fingerprint counts the first run's records: K = 3, no such warning
    r = invoke("report", out, "--json", tmp_path / "f.json", "--fingerprint", first[:8], "-q")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "f.json").read_text())
    assert (summary["images"], summary["left_out"]["other_fingerprints"], summary["warnings"]) == (16, 17, [])


def test_report_makes_the_folders_of_its_outputs(tmp_path: Path):
    data = write_jsonl(tmp_path / "r.jsonl", records(40, {"a": 0.5, "b": 0.5}, per_category=20))
    r = invoke("report", data, "--html", tmp_path / "missing" / "dir" / "x.html", "--json",
               tmp_path / "other" / "s.json", "-q")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "missing" / "dir" / "x.html").stat().st_size > 10_000
    assert json.loads((tmp_path / "other" / "s.json").read_text())["images"] == 40
    (tmp_path / "a-file").write_text("")
    r = invoke("report", data, "--html", tmp_path / "a-file" / "x.html")
    assert r.exit_code == 1 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert "x.html: cannot write it" in r.output


@pytest.mark.parametrize("spec", ["regex:(", "colour", "column:"])
def test_a_bad_group_by_is_a_usage_error(tmp_path: Path, spec: str):
    data = write_jsonl(tmp_path / "r.jsonl", records(10, per_category=5))
    r = invoke("report", data, "--json", tmp_path / "s.json", "--group-by", spec)
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if "Error" in line]
    assert len(errors) == 1 and "Invalid value for '--group-by'" in errors[0] and "Traceback" not in r.output
    assert not (tmp_path / "s.json").exists()
