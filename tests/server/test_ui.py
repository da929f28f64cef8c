"""End-to-end tests of the web UI at ``/``: a real Chromium (Playwright) against the real server.

The models are the tiny random-weight ones of the server fixtures, so prompts are gibberish;
these tests check the plumbing: what the page sends, what it shows, and that it never throws.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_images

CHROMIUM = "/usr/bin/chromium"

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover  the test extra is not installed
    pytest.skip("playwright is not installed (pip install playwright)", allow_module_level=True)
if not os.path.exists(CHROMIUM):  # pragma: no cover
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

TIMEOUT_MS = 30_000  # one request on the tiny CPU models takes well under a second


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--no-proxy-server"])
        try:
            yield b
        finally:
            b.close()


class UI:
    """One fresh page on the UI, with the JavaScript exceptions it raised."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda err: self.errors.append(str(err)))


@pytest.fixture
def ui(browser: Browser, server_url: str) -> Iterator[UI]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 860})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    view = UI(page)
    page.goto(server_url + "/")
    # The models line is filled from GET /v1/models; after it, the mode list is the server's.
    expect(page.locator("#models")).to_contain_text("CLIP:")
    try:
        yield view
        assert view.errors == [], f"JavaScript exceptions on the page: {view.errors}"
    finally:
        context.close()


@pytest.fixture
def upload_dir(tmp_path: Path) -> Path:
    images = make_images(3, size=96)
    images[0].save(tmp_path / "first.png")
    images[2].save(tmp_path / "second.jpg", format="JPEG")
    (tmp_path / "broken.jpg").write_bytes(b"these bytes are not an image at all")
    (tmp_path / "notes.txt").write_bytes(b"plain text, not an image\n")
    return tmp_path


def _post_multipart(url: str, fields: dict[str, str], file_field: str, path: Path) -> tuple[int, Any]:
    """POST one file and some fields as multipart/form-data with urllib; returns (status, JSON)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{path.name}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    req = urllib.request.Request(url, data=b"".join(parts), method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_prompt_tab_shows_the_servers_prompt(ui: UI, server_url: str, upload_dir: Path) -> None:
    page = ui.page
    image = upload_dir / "first.png"
    # The defaults the page sends: the server's default mode, and the negative box checked.
    expect(page.locator("#mode")).to_have_value("best")
    expect(page.locator("#negative")).to_be_checked()

    page.set_input_files("#prompt-file", str(image))
    expect(page.locator("#prompt-preview")).to_be_visible()
    page.click("#run")
    expect(page.locator("#prompt")).not_to_have_value("")
    expect(page.locator("#run")).to_be_enabled()

    status, direct = _post_multipart(server_url + "/v1/interrogate", {"mode": "best", "negative": "true"},
                                     "image", image)
    assert status == 200, direct
    assert direct["prompt"]
    assert page.input_value("#prompt") == direct["prompt"]
    assert page.text_content("#tokens") == f"{direct['token_count']} / 75 tokens"
    assert direct["negative"] and direct["negative"]["prompt"]
    expect(page.locator("#negative-block")).to_be_visible()
    assert page.input_value("#negative-prompt") == direct["negative"]["prompt"]
    # One table row per phrase of the result, and no error shown.
    expect(page.locator("#phrases tbody tr")).to_have_count(len(direct["phrases"]))
    expect(page.locator("#error")).to_be_hidden()
    # The relevance floor is on by default: what it kept out is listed, and the specificity shown.
    expect(page.locator("#rejected tbody tr")).to_have_count(len(direct["rejected"]))
    if direct["rejected"]:
        expect(page.locator("#rejected-block")).to_be_visible()
    else:
        expect(page.locator("#rejected-block")).to_be_hidden()
    if direct["specificity"] is not None:
        shown = math.floor(direct["specificity"] * 100 + 0.5)  # JavaScript's Math.round
        assert page.text_content("#specificity") == f"specific {shown}%"


def test_prompt_tab_lists_what_the_relevance_floor_kept_out(ui: UI, server_url: str, upload_dir: Path) -> None:
    page = ui.page
    image = upload_dir / "first.png"
    page.uncheck("#negative")
    page.click("details.advanced summary")
    page.fill("#floor", "1.5")
    page.select_option("#mode", "fast")
    page.set_input_files("#prompt-file", str(image))
    page.click("#run")
    expect(page.locator("#prompt")).not_to_have_value("")
    expect(page.locator("#run")).to_be_enabled()
    status, direct = _post_multipart(server_url + "/v1/interrogate",
                                     {"mode": "fast", "negative": "false", "floor": "1.5"}, "image", image)
    assert status == 200, direct
    assert page.input_value("#prompt") == direct["prompt"]
    assert direct["rejected"], "random weights: some of fast mode's 32 phrases sit under a support of 1.5"
    expect(page.locator("#rejected-block")).to_be_visible()
    expect(page.locator("#rejected tbody tr")).to_have_count(len(direct["rejected"]))
    expect(page.locator("#rejected tbody tr").first).to_contain_text(direct["rejected"][0]["text"])
    assert page.text_content("#specificity") == "specific 100%"
    # "off" turns it off: the reference's prompt, nothing kept out.
    page.fill("#floor", "off")
    page.click("#run")
    status, plain = _post_multipart(server_url + "/v1/interrogate",
                                    {"mode": "fast", "negative": "false", "floor": "off"}, "image", image)
    assert status == 200 and plain["rejected"] == [] and plain["prompt"] != direct["prompt"], plain
    expect(page.locator("#prompt")).to_have_value(plain["prompt"])
    expect(page.locator("#rejected-block")).to_be_hidden()
    assert not ui.errors


def test_prompt_tab_without_negative_hides_it(ui: UI, upload_dir: Path) -> None:
    page = ui.page
    page.uncheck("#negative")
    page.set_input_files("#prompt-file", str(upload_dir / "second.jpg"))
    page.click("#run")
    expect(page.locator("#prompt")).not_to_have_value("")
    expect(page.locator("#negative-block")).to_be_hidden()
    assert page.input_value("#negative-prompt") == ""
    assert re.fullmatch(r"\d+ / 75 tokens", page.text_content("#tokens") or "")


def test_analyze_tab_shows_bars_and_hypothesis_badges(ui: UI, server_url: str, upload_dir: Path) -> None:
    page = ui.page
    page.click("#tab-analyze")
    expect(page.locator("#panel-analyze")).to_be_visible()
    expect(page.locator("#panel-prompt")).to_be_hidden()
    page.set_input_files("#analyze-file", str(upload_dir / "first.png"))
    page.click("#analyze")
    bars = page.locator("#analyze-results .bar")
    expect(bars.first).to_be_visible()
    assert bars.count() >= 5
    artists = page.locator("#analyze-results .category", has=page.locator("h3", has_text="Artists"))
    expect(artists).to_have_count(1)
    expect(artists.locator(".badge", has_text="hypothesis").first).to_be_visible()
    # Only the artists are hypotheses: the mediums carry no badge.
    mediums = page.locator("#analyze-results .category", has=page.locator("h3", has_text="Mediums"))
    expect(mediums.locator(".bar").first).to_be_visible()
    expect(mediums.locator(".badge", has_text="hypothesis")).to_have_count(0)
    # Phrases under the relevance floor are marked, and only those.
    status, direct = _post_multipart(server_url + "/v1/analyze", {}, "image", upload_dir / "first.png")
    assert status == 200, direct
    below = sum(1 for ps in direct["categories"].values() for p in ps if p["support"] < direct["floor"])
    expect(page.locator("#analyze-results .badge.weak")).to_have_count(below)
    # Bars are scaled within their block: the best phrase of each block is the longest bar.
    widths = page.eval_on_selector_all(
        "#analyze-results .category",
        "blocks => blocks.map(b => Array.from(b.querySelectorAll('.bar .bar-fill'))"
        "  .map(x => parseFloat(x.style.width)))")
    assert widths and all(w for w in widths)
    for block in widths:
        assert all(0 < w <= 100 for w in block), widths
        assert block[0] == max(block) == 100, widths
    expect(page.locator("#error")).to_be_hidden()


def test_batch_tab_reports_a_broken_file_and_downloads_csv(ui: UI, upload_dir: Path) -> None:
    page = ui.page
    page.click("#tab-batch")
    files = [upload_dir / "first.png", upload_dir / "second.jpg", upload_dir / "broken.jpg"]
    page.set_input_files("#batch-files", [str(f) for f in files])
    expect(page.locator("#batch-chosen")).to_have_text("3 files chosen")
    page.click("#batch-run")

    summary = page.locator("#batch-summary")
    expect(summary).to_have_text(re.compile(r"^3 images: 2 ok, 1 failed"))
    rows = page.locator("#batch-table tbody tr")
    expect(rows).to_have_count(3)
    errors = page.locator("#batch-table tbody tr.error-row")
    expect(errors).to_have_count(1)
    expect(errors.locator("td").first).to_have_text("broken.jpg")
    expect(errors.locator("td").nth(2)).to_contain_text("broken.jpg")
    for i in range(3):
        if "error-row" not in (rows.nth(i).get_attribute("class") or ""):
            assert (rows.nth(i).locator("td").nth(2).text_content() or "").strip()

    expect(page.locator("#download-csv")).to_be_visible()
    with page.expect_download() as info:
        page.click("#download-csv")
    download = info.value
    assert re.fullmatch(r"image2prompt-\w+\.csv", download.suggested_filename), download.suggested_filename
    text = Path(download.path()).read_text(encoding="utf-8")
    table = list(csv.reader(io.StringIO(text)))
    assert len(table) == 4, text  # a header line and one row per upload
    header, body = table[0], table[1:]
    assert "source" in header
    sources = sorted(row[header.index("source")] for row in body)
    assert sources == ["broken.jpg", "first.png", "second.jpg"]
    expect(page.locator("#error")).to_be_hidden()


def test_prompt_tab_shows_an_error_for_a_non_image(ui: UI, upload_dir: Path) -> None:
    page = ui.page
    page.set_input_files("#prompt-file", str(upload_dir / "notes.txt"))
    page.click("#run")
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("notes.txt")
    expect(page.locator("#run")).to_be_enabled()
    expect(page.locator("#status")).to_have_text("")
    expect(page.locator("#prompt-output")).to_be_hidden()
    expect(page.locator("#prompt-preview")).to_be_hidden()  # no broken-image icon for a non-image


def test_batch_tab_says_which_files_it_skips(ui: UI, upload_dir: Path) -> None:
    page = ui.page
    page.click("#tab-batch")
    page.set_input_files("#batch-files", [str(upload_dir / "first.png"), str(upload_dir / "notes.txt")])
    expect(page.locator("#batch-chosen")).to_have_text(
        "1 file chosen; skipped 1 that is neither an image nor a .zip (notes.txt)")


def test_the_page_waits_for_models_that_are_still_loading(browser: Browser, serve_interrogator: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from image2prompt.server import ServerConfig, create_app
    from tests.support.server import running_app

    gate = threading.Event()

    def loader() -> Any:
        gate.wait(30)
        return serve_interrogator

    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        view = UI(page)
        with running_app(create_app(loader, ServerConfig()), monkeypatch, ready=False) as base:
            page.goto(base + "/")
            expect(page.locator("#models")).to_contain_text("Loading models")
            expect(page.locator("#error")).to_be_hidden()
            gate.set()
            # /v1/models answers 503 with Retry-After while loading; the page asks again.
            expect(page.locator("#models")).to_contain_text("CLIP:", timeout=15_000)
            expect(page.locator("#error")).to_be_hidden()
            expect(page.locator("#version")).to_contain_text("image2prompt")
        assert view.errors == [], f"JavaScript exceptions on the page: {view.errors}"
    finally:
        gate.set()
        context.close()
