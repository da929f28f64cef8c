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
from contextlib import contextmanager
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


@contextmanager
def _open_ui(browser: Browser, url: str, *, loaded: bool = True) -> Iterator[UI]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 860})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    view = UI(page)
    page.goto(url + "/")
    if loaded:
        # The models line is filled from GET /v1/models; after it, the mode list is the server's.
        expect(page.locator("#models")).to_contain_text("CLIP:")
    try:
        yield view
        assert view.errors == [], f"JavaScript exceptions on the page: {view.errors}"
    finally:
        context.close()


@pytest.fixture
def ui(browser: Browser, server_url: str) -> Iterator[UI]:
    with _open_ui(browser, server_url) as view:
        yield view


@pytest.fixture(scope="module")
def captionless_url(tiny_open_clip: Path, small_vocab_dir: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with no captioner (``--caption-model none``): only a typed caption, or a mode that
    needs none, gives a prompt."""
    from image2prompt import Config, Interrogator
    from image2prompt.server import ServerConfig, create_app
    from tests.support.server import running_app

    ip = Interrogator.load(Config(clip_model=f"local-dir:{tiny_open_clip}", caption_model=None, device="cpu",
                                  cache_dir=str(tmp_path_factory.mktemp("captionless-cache")),
                                  vocab=(str(small_vocab_dir),)))
    mp = pytest.MonkeyPatch()
    try:
        with running_app(create_app(ip, ServerConfig()), mp) as base:
            yield base
    finally:
        mp.undo()


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


def _get_json(url: str) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=60) as r:
        return json.loads(r.read())


def test_a_server_without_a_captioner_starts_on_a_mode_that_runs(browser: Browser, captionless_url: str,
                                                                  upload_dir: Path) -> None:
    models = _get_json(captionless_url + "/v1/models")
    assert models["caption_model"] is None and models["default_mode"] == "best"
    assert "style" in models["caption_free_modes"] and "best" not in models["caption_free_modes"]
    with _open_ui(browser, captionless_url) as ui:
        page = ui.page
        # Not the server's default (best needs a caption, and would answer the first Run with a 422).
        expect(page.locator("#mode")).to_have_value("style")
        expect(page.locator("#batch-mode")).to_have_value("style")
        expect(page.locator("#panel-prompt .caption-hint")).to_contain_text("this server has no captioner")
        page.set_input_files("#prompt-file", str(upload_dir / "first.png"))
        page.click("#run")
        expect(page.locator("#prompt-output")).to_be_visible()
        expect(page.locator("#run")).to_be_enabled()
        expect(page.locator("#error")).to_be_hidden()
        status, direct = _post_multipart(captionless_url + "/v1/interrogate", {"mode": "style", "negative": "true"},
                                         "image", upload_dir / "first.png")
        assert status == 200, direct
        assert page.input_value("#prompt") == direct["prompt"]


def test_batch_tab_sends_a_typed_caption(browser: Browser, captionless_url: str, upload_dir: Path) -> None:
    with _open_ui(browser, captionless_url) as ui:
        page = ui.page
        page.click("#tab-batch")
        expect(page.locator("#panel-batch .caption-hint")).to_contain_text("this server has no captioner")
        page.set_input_files("#batch-files", [str(upload_dir / "first.png"), str(upload_dir / "second.jpg")])
        # Fast mode needs a caption, and this server cannot make one: the typed one is used for both.
        page.select_option("#batch-mode", "fast")
        page.fill("#batch-caption", "a lighthouse on a cliff")
        page.click("#batch-run")
        expect(page.locator("#batch-summary")).to_have_text(re.compile(r"^2 images: 2 ok, 0 failed"))
        rows = page.locator("#batch-table tbody tr")
        expect(rows).to_have_count(2)
        for i in range(2):
            expect(rows.nth(i).locator("td").nth(2)).to_have_text(re.compile(r"^a lighthouse on a cliff"))
        expect(page.locator("#error")).to_be_hidden()


def test_the_number_fields_take_the_servers_bounds(ui: UI, server_url: str, upload_dir: Path) -> None:
    page = ui.page
    schema = _get_json(server_url + "/openapi.json")["paths"]["/v1/interrogate"]["post"]["requestBody"][
        "content"]["application/json"]["schema"]["properties"]
    most = {name: int(next(alt["maximum"] for alt in schema[name]["anyOf"] if "maximum" in alt))
            for name in ("max_tokens", "beam")}
    assert most == {"max_tokens": 300, "beam": 8}  # the server's caps, which the page must not exceed
    expect(page.locator("#max-tokens")).to_have_attribute("max", str(most["max_tokens"]))
    expect(page.locator("#beam")).to_have_attribute("max", str(most["beam"]))
    page.click("details.advanced summary")
    page.select_option("#mode", "fast")
    page.set_input_files("#prompt-file", str(upload_dir / "first.png"))
    # Past the bound: the page says so in words, before asking the server.
    page.fill("#max-tokens", str(most["max_tokens"] + 1))
    page.click("#run")
    expect(page.locator("#error")).to_contain_text(f"Max tokens: give a whole number from 3 to {most['max_tokens']}")
    expect(page.locator("#prompt-output")).to_be_hidden()
    page.fill("#max-tokens", str(most["max_tokens"]))
    page.fill("#beam", str(most["beam"] + 1))
    page.click("#run")
    expect(page.locator("#error")).to_contain_text(f"Beams: give a whole number from 1 to {most['beam']}")
    # At the bounds the server takes it.
    page.fill("#beam", str(most["beam"]))
    page.click("#run")
    expect(page.locator("#prompt-output")).to_be_visible()
    expect(page.locator("#error")).to_be_hidden()
    assert (page.text_content("#tokens") or "").endswith(f"/ {most['max_tokens'] - 2} tokens")


def test_an_api_key_error_points_at_the_key_box(browser: Browser, serve_interrogator: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from image2prompt.server import ServerConfig, create_app
    from tests.support.server import running_app

    app = create_app(serve_interrogator, ServerConfig(api_key="open-sesame"))
    with running_app(app, monkeypatch) as base, _open_ui(browser, base, loaded=False) as ui:
        page = ui.page
        error, auth = page.locator("#error"), page.locator("#auth")
        expect(error).to_contain_text("this server needs an API key; enter it in the API key box below")
        expect(auth).to_be_visible()
        box, form = error.bounding_box(), auth.bounding_box()
        assert box and form and form["y"] >= box["y"] + box["height"], (box, form)  # below it, as it says
        page.fill("#api-key", "wrong")
        page.click("#api-key-save")
        expect(error).to_contain_text("the saved API key was rejected; enter a new one in the API key box below")
        box, form = error.bounding_box(), auth.bounding_box()
        assert box and form and form["y"] >= box["y"] + box["height"], (box, form)
        page.fill("#api-key", "open-sesame")
        page.click("#api-key-save")
        expect(page.locator("#models")).to_contain_text("CLIP:")
        expect(error).to_be_hidden()


def test_the_kept_out_note_fits_the_mode(ui: UI, server_url: str, upload_dir: Path) -> None:
    page = ui.page
    image = upload_dir / "first.png"
    note = page.locator("#rejected-note")
    page.uncheck("#negative")
    page.click("details.advanced summary")
    page.fill("#floor", "1.5")
    page.set_input_files("#prompt-file", str(image))
    for mode, word, wrong in (("negative", "lowered", "raised"), ("fast", "raised", "lowered")):
        status, direct = _post_multipart(server_url + "/v1/interrogate",
                                         {"mode": mode, "negative": "false", "floor": "1.5"}, "image", image)
        assert status == 200 and direct["rejected"], (mode, direct)
        page.select_option("#mode", mode)
        page.click("#run")
        expect(page.locator("#prompt")).to_have_value(direct["prompt"])
        expect(page.locator("#rejected-block")).to_be_visible()
        expect(note).to_contain_text(f"would have {word} the prompt's similarity")
        expect(note).not_to_contain_text(wrong)


def test_a_floor_out_of_range_is_refused_in_words(ui: UI, server_url: str, upload_dir: Path) -> None:
    page = ui.page
    image = upload_dir / "first.png"
    page.click("details.advanced summary")
    page.select_option("#mode", "fast")
    page.fill("#floor", "1e308")
    page.set_input_files("#prompt-file", str(image))
    page.click("#run")
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("floor must be from -10 to 10")
    expect(page.locator("#prompt-output")).to_be_hidden()
    # The server refuses it, as it refuses more chain steps at least than at most.
    status, body = _post_multipart(server_url + "/v1/interrogate", {"mode": "fast", "floor": "1e308"}, "image", image)
    assert status == 422 and "floor must be from -10 to 10" in body["error"], body
    status, body = _post_multipart(server_url + "/v1/interrogate", {"min_flavors": "50", "max_flavors": "4"},
                                   "image", image)
    assert status == 422 and "min_flavors (50) must not exceed max_flavors (4)" in body["error"], body


def test_an_empty_prompt_says_why(browser: Browser, captionless_url: str, upload_dir: Path) -> None:
    """Style mode writes no caption, so a floor no phrase clears leaves the prompt empty: the page says so."""
    with _open_ui(browser, captionless_url) as ui:
        page = ui.page
        page.click("details.advanced summary")
        page.fill("#floor", "10")
        page.set_input_files("#prompt-file", str(upload_dir / "first.png"))
        page.click("#run")
        expect(page.locator("#prompt-output")).to_be_visible()
        assert page.input_value("#prompt") == ""
        warning = page.locator("#empty-warning")
        expect(warning).to_be_visible()
        expect(warning).to_contain_text("the relevance floor kept out every phrase")
        # A floor that some phrase clears: a prompt, and no warning.
        page.fill("#floor", "off")
        page.click("#run")
        expect(page.locator("#prompt")).not_to_have_value("")
        expect(warning).to_be_hidden()
