"""Screenshots of the web UI of ``image2prompt serve``, for the docs.

Run by hand from the repository root (offline; needs the ``serve`` and ``test`` extras and
Debian's Chromium at /usr/bin/chromium)::

    python docs/screenshots/make_screenshots.py

It builds the tiny random-weight models of the test suite in a temporary folder, serves them
with the real application (in-process, on a loopback port), drives Chromium at 1280x860
through the Prompt, Analyze and Batch tabs with generated landscape images, and writes
``prompt.png``, ``analyze.png`` and ``batch.png`` next to this script.

The models have random weights, so captions and scores are meaningless: the screenshots show
the layout, not the quality. (The Prompt tab gets a typed caption, a real feature of the form,
so its prompt reads like one; the Batch tab shows what the tiny captioner makes up.)
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # tests.support and tests.conftest live in the repository, not the package

from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 860}
MAX_BYTES = 300_000


# --- input images ----------------------------------------------------------------------------


def _lerp(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


def landscape(width: int = 768, height: int = 512, *, top: tuple[int, int, int] = (38, 64, 140),
              horizon: tuple[int, int, int] = (250, 170, 110), sun: tuple[float, float] = (0.68, 0.52),
              sun_color: tuple[int, int, int] = (255, 226, 150),
              hills: tuple[tuple[int, int, int], ...] = ((72, 96, 70), (46, 74, 52), (28, 52, 38)),
              seed: float = 0.0) -> Image.Image:
    """A gradient sky, a glowing sun and layered hills: a plausible photo-like input, no downloads."""
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for y in range(height):
        draw.line([(0, y), (width, y)], fill=_lerp(top, horizon, min(1.0, (y / (0.72 * height)) ** 1.3)))
    # the sun with a soft glow
    glow = Image.new("L", (width, height), 0)
    cx, cy, r = sun[0] * width, sun[1] * height, 0.07 * width
    ImageDraw.Draw(glow).ellipse([cx - 3 * r, cy - 3 * r, cx + 3 * r, cy + 3 * r], fill=120)
    glow = glow.filter(ImageFilter.GaussianBlur(r * 1.2))
    img = Image.composite(Image.new("RGB", img.size, sun_color), img, glow)
    draw = ImageDraw.Draw(img)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=sun_color)
    # hills, far to near
    for i, color in enumerate(hills):
        base = height * (0.58 + 0.11 * i)
        amp = height * (0.06 + 0.02 * i)
        points = [(0, height)]
        for x in range(0, width + 8, 8):
            y = base - amp * math.sin(x / width * (2.2 + i) * math.pi + seed + 1.7 * i) \
                - 0.4 * amp * math.sin(x / width * (5.1 + 2 * i) * math.pi + 2 * seed)
            points.append((x, y))
        points.append((width, height))
        draw.polygon(points, fill=color)
    return img.filter(ImageFilter.SMOOTH)


def batch_images() -> list[tuple[str, Image.Image]]:
    return [
        ("sunset-hills.jpg", landscape()),
        ("blue-hour.jpg", landscape(top=(14, 22, 60), horizon=(96, 110, 170), sun=(0.25, 0.42),
                                    sun_color=(236, 240, 255), hills=((40, 48, 80), (28, 34, 60), (16, 20, 40)),
                                    seed=1.3)),
        ("noon-meadow.jpg", landscape(top=(70, 140, 230), horizon=(190, 220, 245), sun=(0.5, 0.18),
                                      sun_color=(255, 252, 230), hills=((120, 170, 90), (84, 140, 64), (56, 110, 44)),
                                      seed=2.6)),
    ]


def _jpeg(img: Image.Image, path: Path) -> Path:
    img.save(path, format="JPEG", quality=90)
    return path


# --- screenshots -----------------------------------------------------------------------------


def _save_small(png: bytes, out: Path) -> None:
    """The screenshot as a PNG under MAX_BYTES: lossless when it fits, else a 256-colour palette."""
    if len(png) <= MAX_BYTES:
        out.write_bytes(png)
        return
    img = Image.open(io.BytesIO(png)).convert("RGB")
    buf = io.BytesIO()
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        buf, format="PNG", optimize=True)
    out.write_bytes(buf.getvalue())


def build_models(tmp: Path) -> object:
    from image2prompt import Config, Interrogator
    from tests.conftest import SMALL_VOCAB
    from tests.support.tiny_models import make_blip_dir, make_open_clip_dir

    vocab = tmp / "vocab"
    vocab.mkdir()
    for name, lines in SMALL_VOCAB.items():
        (vocab / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    make_open_clip_dir(tmp / "tiny-random-clip")
    make_blip_dir(tmp / "tiny-random-blip")
    # Relative folder names (from tmp) keep the page's model line short: "local-dir:tiny-random-clip".
    here = os.getcwd()
    os.chdir(tmp)
    try:
        return Interrogator.load(Config(clip_model="local-dir:tiny-random-clip",
                                        caption_model="local-dir:tiny-random-blip", device="cpu",
                                        cache_dir=str(tmp / "cache"), vocab=(str(vocab),)))
    finally:
        os.chdir(here)


def shoot(base: str, tmp: Path, out_dir: Path) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright

    inputs = tmp / "inputs"
    inputs.mkdir()
    hero = _jpeg(landscape(), inputs / "sunset-hills.jpg")
    batch = [_jpeg(img, inputs / name) for name, img in batch_images()]
    broken = inputs / "scan-0042.jpg"
    broken.write_bytes(b"\xff\xd8 a truncated download, not a whole JPEG")

    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--no-proxy-server"])
        try:
            context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1, color_scheme="light",
                                          accept_downloads=True)
            context.set_default_timeout(60_000)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(base + "/")
            expect(page.locator("#models")).to_contain_text("CLIP:")

            # Prompt
            page.set_input_files("#prompt-file", str(hero))
            expect(page.locator("#prompt-preview")).to_be_visible()
            page.fill("#caption", "a sunset over rolling green hills")
            page.click("#run")
            expect(page.locator("#prompt")).not_to_have_value("")
            expect(page.locator("#run")).to_be_enabled()
            page.mouse.move(0, 0)
            written.append(out_dir / "prompt.png")
            _save_small(page.screenshot(), written[-1])

            # Analyze
            page.click("#tab-analyze")
            page.set_input_files("#analyze-file", str(hero))
            page.click("#analyze")
            expect(page.locator("#analyze-results .bar").first).to_be_visible()
            expect(page.locator("#analyze")).to_be_enabled()
            page.mouse.move(0, 0)
            written.append(out_dir / "analyze.png")
            _save_small(page.screenshot(), written[-1])

            # Batch
            page.click("#tab-batch")
            page.set_input_files("#batch-files", [str(f) for f in [*batch, broken]])
            page.fill("#batch-prefix", "sks style")
            page.click("#batch-run")
            expect(page.locator("#batch-summary")).not_to_be_empty()
            expect(page.locator("#batch-run")).to_be_enabled()
            page.mouse.move(0, 0)
            written.append(out_dir / "batch.png")
            _save_small(page.screenshot(), written[-1])
            if errors:
                raise RuntimeError(f"JavaScript exceptions on the page: {errors}")
        finally:
            browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the PNGs (default: next to this script)")
    args = parser.parse_args(argv)
    if not os.path.exists(CHROMIUM):
        print(f"no Chromium at {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import pytest

    from image2prompt.server import ServerConfig, create_app
    from tests.support.server import running_app

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="i2p-shots-") as name:
        tmp = Path(name)
        os.environ.setdefault("IMAGE2PROMPT_CACHE_DIR", str(tmp / "cache"))
        interrogator = build_models(tmp)
        mp = pytest.MonkeyPatch()  # running_app unsets the proxy variables through it: loopback stays direct
        try:
            with running_app(create_app(interrogator, ServerConfig()), mp) as base:
                for path in shoot(base, tmp, args.out):
                    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")
        finally:
            mp.undo()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
