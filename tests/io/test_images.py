from __future__ import annotations

import http.server
import io
import os
import random
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

import image2prompt.io.download as download_mod
import image2prompt.io.images as images_mod
from image2prompt.errors import ImageLoadError
from image2prompt.io import ImageSource, expand_sources, load_image
from tests.support.http import QuietHandler, serve_folder

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def _save(image: Image.Image, path: Path, **params: Any) -> Path:
    image.save(path, **params)
    return path


def _rgb(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    pixel = image.getpixel(xy)
    assert isinstance(pixel, tuple), pixel
    return pixel


def _gradient(size: tuple[int, int] = (64, 48)) -> Image.Image:
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, axis=0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, axis=1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1))


def _load_error(source: object, **kwargs: object) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(source, **kwargs)  # type: ignore[arg-type]
    return info.value


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height but whose pixel data is a stub."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
    )
    return path


# --- plain loading ---------------------------------------------------------------


def test_png_round_trip_is_exact_and_detached(tmp_path: Path) -> None:
    original = _gradient()
    path = _save(original, tmp_path / "g.png")

    loaded = load_image(path)

    assert loaded.mode == "RGB"
    assert loaded.size == original.size
    assert np.array_equal(np.asarray(loaded), np.asarray(original))
    path.unlink()  # fully decoded: no lazy reads from the file afterwards
    assert loaded.getpixel((10, 10)) == original.getpixel((10, 10))


def test_accepts_str_image_source_bytes_and_pil(tmp_path: Path) -> None:
    original = _gradient((8, 8))
    path = _save(original, tmp_path / "g.png")
    expected = np.asarray(original)

    sources: list[Any] = [
        str(path),
        ImageSource(str(path), "path", path),
        path.read_bytes(),
        bytearray(path.read_bytes()),
        original,
    ]
    for source in sources:
        assert np.array_equal(np.asarray(load_image(source)), expected), type(source)


def test_pil_input_is_not_modified(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    out = load_image(rgba)
    assert out is not rgba
    assert rgba.mode == "RGBA"
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_jpeg_round_trip_of_real_photo(tmp_path: Path) -> None:
    skdata = pytest.importorskip("skimage.data")
    photo = Image.fromarray(skdata.astronaut())
    path = _save(photo, tmp_path / "astronaut.jpg", quality=95)

    loaded = load_image(path)

    assert loaded.mode == "RGB"
    assert loaded.size == (512, 512)
    diff = np.abs(np.asarray(loaded, dtype=np.int16) - np.asarray(photo, dtype=np.int16))
    assert diff.mean() < 3.0


# --- colour handling -------------------------------------------------------------


def test_transparent_png_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (2, 1))
    image.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    image.putpixel((1, 0), (255, 0, 0, 128))  # half-transparent red
    path = _save(image, tmp_path / "alpha.png")

    loaded = load_image(path)

    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    r, g, b = _rgb(loaded, (1, 0))
    assert r == 255 and 125 <= g <= 129 and g == b


def test_palette_with_transparency_and_la_are_composited(tmp_path: Path) -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    path = _save(palette, tmp_path / "p.png", transparency=0)
    assert load_image(path).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(path).getpixel((1, 0)) == BLUE

    la = Image.new("LA", (1, 1), (0, 0))
    assert load_image(la).getpixel((0, 0)) == (255, 255, 255)


def test_palette_and_greyscale_become_rgb(tmp_path: Path) -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 0), 1)
    loaded = load_image(_save(palette, tmp_path / "p.gif"))
    assert loaded.mode == "RGB"
    assert [loaded.getpixel((0, 0)), loaded.getpixel((1, 0))] == [RED, BLUE]

    grey = load_image(_save(Image.new("L", (3, 3), 77), tmp_path / "l.png"))
    assert grey.mode == "RGB" and grey.getpixel((1, 1)) == (77, 77, 77)

    bilevel = load_image(Image.new("1", (2, 2), 1))
    assert bilevel.getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    loaded = load_image(_save(cmyk, tmp_path / "cmyk.jpg", quality=100))
    assert loaded.mode == "RGB"
    r, g, b = _rgb(loaded, (4, 4))
    assert r > 240 and g < 15 and b < 15


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 128 * 257, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")

    loaded = load_image(path)

    assert loaded.mode == "RGB"
    assert [loaded.getpixel((x, 0)) for x in range(3)] == [
        (0, 0, 0),
        (128, 128, 128),
        (255, 255, 255),
    ]


def test_float_image_in_unit_range_is_scaled() -> None:
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert image.mode == "F"
    loaded = load_image(image)
    assert [_rgb(loaded, (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = _save(image, tmp_path / "rotated.jpg", exif=exif, quality=95)

    loaded = load_image(path)

    assert loaded.size == (20, 40)
    # Rotating clockwise moves the left (red) half to the top.
    top, bottom = _rgb(loaded, (10, 5)), _rgb(loaded, (10, 35))
    assert top[0] > 200 and top[2] < 50
    assert bottom[2] > 200 and bottom[0] < 50


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as check:
        assert getattr(check, "n_frames", 1) == 2

    loaded = load_image(path)

    assert loaded.getpixel((4, 4)) == RED


def test_animated_webp_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), BLUE), Image.new("RGB", (8, 8), RED)]
    path = tmp_path / "anim.webp"
    frames[0].save(path, save_all=True, append_images=frames[1:], lossless=True)

    assert load_image(path).getpixel((4, 4)) == BLUE


# --- failures --------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    err = _load_error(missing)
    assert (err.source, err.reason) == (str(missing), "no such file")

    err = _load_error(tmp_path)
    assert (err.source, err.reason) == (str(tmp_path), "is a directory")


def test_random_bytes_with_jpg_extension(tmp_path: Path) -> None:
    path = tmp_path / "noise.jpg"
    path.write_bytes(random.Random(0).randbytes(4096))

    err = _load_error(path)

    assert err.source == str(path)
    assert str(path) in str(err)
    assert err.reason == "not an image or unsupported format"


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "fake.png"
    path.write_text("this is not a picture\n")
    assert _load_error(path).reason == "not an image or unsupported format"


def test_too_large_message_names_no_library_argument(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (100, 60)), tmp_path / "big.png")
    reason = _load_error(path, max_pixels=10).reason
    assert "max_pixels=" not in reason and "None" not in reason
    assert reason.endswith("; raise the max-pixels limit)")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".dat"])
def test_empty_file_says_empty_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    err = _load_error(path)
    assert (err.source, err.reason) == (str(path), "empty file")


def test_empty_bytes_say_empty_file() -> None:
    err = _load_error(b"")
    assert (err.source, err.reason) == ("<bytes>", "empty file")


def test_empty_file_in_a_folder_says_empty_file(tmp_path: Path) -> None:
    (tmp_path / "blank.png").write_bytes(b"")
    (source,) = expand_sources([tmp_path])
    with pytest.raises(ImageLoadError, match="empty file"):
        load_image(source)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image_fails_at_load_time(tmp_path: Path, suffix: str) -> None:
    full = _save(_gradient((128, 128)), tmp_path / f"full{suffix}")
    cut = tmp_path / f"cut{suffix}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])

    err = _load_error(cut)

    assert err.source == str(cut)
    assert err.reason.startswith("corrupt or truncated image (")


def test_max_pixels_is_enforced(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (100, 60)), tmp_path / "big.png")

    err = _load_error(path, max_pixels=5_999)
    assert err.reason == (
        "image too large (100×60 pixels, limit 5999 pixels; raise the max-pixels limit)"
    )
    assert load_image(path, max_pixels=6_000).size == (100, 60)
    assert load_image(path, max_pixels=None).size == (100, 60)
    assert _load_error(Image.new("RGB", (100, 60)), max_pixels=10).reason.startswith(
        "image too large"
    )


def test_size_is_checked_from_header_before_decoding(tmp_path: Path) -> None:
    # 100M pixels: above PIL's own warning threshold, whose warning must not leak.
    path = _png_header_only(tmp_path / "bomb.png", 10_000, 10_000)
    before = Image.MAX_IMAGE_PIXELS

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        err = _load_error(path)

    # Had it decoded, the stub pixel data would have been reported as truncated.
    assert err.reason.startswith("image too large (10000×10000 pixels, limit 64000000 pixels;")
    assert Image.MAX_IMAGE_PIXELS == before


def test_pil_decompression_bomb_error_is_converted(tmp_path: Path) -> None:
    # 10^10 pixels: PIL itself refuses to open it; we still report the real size.
    path = _png_header_only(tmp_path / "huge.png", 100_000, 100_000)
    before = Image.MAX_IMAGE_PIXELS
    assert before is not None

    assert _load_error(path).reason.startswith(
        "image too large (100000×100000 pixels, limit 64000000 pixels;"
    )
    assert _load_error(path, max_pixels=2 * before).reason.startswith(
        f"image too large (100000×100000 pixels, limit {2 * before}"
    )
    assert Image.MAX_IMAGE_PIXELS == before


def test_max_pixels_overrides_stricter_pil_limit_temporarily(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save(_gradient((100, 60)), tmp_path / "g.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # PIL alone would refuse 6000 px

    assert load_image(path).size == (100, 60)
    assert load_image(path, max_pixels=None).size == (100, 60)
    assert _load_error(path, max_pixels=5_000).reason.startswith("image too large (100×60")
    assert Image.MAX_IMAGE_PIXELS == 1_000  # restored after each call


# --- URLs --------------------------------------------------------------------------


class _UserAgentHandler(QuietHandler):
    seen_user_agents: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen_user_agents.append(self.headers.get("User-Agent", ""))
        super().do_GET()


@pytest.fixture
def http_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """Serve tmp_path on 127.0.0.1; yields (base URL, folder)."""
    _UserAgentHandler.seen_user_agents = []
    with serve_folder(tmp_path, monkeypatch, _UserAgentHandler) as base:
        yield base, tmp_path


def test_url_download_success(http_root: tuple[str, Path]) -> None:
    base, root = http_root
    original = _gradient((16, 12))
    _save(original, root / "pic.png")

    loaded = load_image(f"{base}/pic.png", timeout=5)

    assert np.array_equal(np.asarray(loaded), np.asarray(original))
    assert _UserAgentHandler.seen_user_agents == ["image2prompt"]


def test_url_404(http_root: tuple[str, Path]) -> None:
    base, _ = http_root
    url = f"{base}/missing.png"
    err = _load_error(url, timeout=5)
    assert err.source == url
    assert err.reason == "download failed: HTTP 404 File not found"


def test_url_over_size_cap(http_root: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    base, root = http_root
    _save(_gradient((64, 64)), root / "pic.png")
    monkeypatch.setattr(download_mod, "MAX_DOWNLOAD_BYTES", 100)  # where download_bytes reads it

    err = _load_error(f"{base}/pic.png", timeout=5)

    assert err.reason.startswith("download failed: larger than")


def test_url_not_an_image(http_root: tuple[str, Path]) -> None:
    base, root = http_root
    (root / "page.png").write_text("<html>nope</html>")
    assert _load_error(f"{base}/page.png", timeout=5).reason == "not an image or unsupported format"


def test_url_empty_body_says_empty_file(http_root: tuple[str, Path]) -> None:
    base, root = http_root
    (root / "blank.png").write_bytes(b"")
    url = f"{base}/blank.png"
    err = _load_error(url, timeout=5)
    assert (err.source, err.reason) == (url, "empty file")


def test_url_connection_refused() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), QuietHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens on this port any more

    err = _load_error(f"http://127.0.0.1:{port}/x.png", timeout=5)

    assert err.reason.startswith("download failed: ")
    assert "refused" in err.reason.lower()


# --- import hygiene ---------------------------------------------------------------


def test_io_layer_does_not_import_heavy_frameworks() -> None:
    code = (
        "import sys, image2prompt.io; "
        "heavy = {'torch', 'open_clip', 'transformers'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bmp_from_bytes() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), RED).save(buffer, format="BMP")
    assert load_image(buffer.getvalue()).size == (3, 2)


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="needs POSIX permissions, not root"
)
def test_unreadable_file_is_permission_denied(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (2, 2)), tmp_path / "locked.png")
    path.chmod(0)
    try:
        assert _load_error(path).reason == "permission denied"
    finally:
        path.chmod(0o644)


# --- what a server needs: allowed formats, error kinds, public addresses only ------------------------


def test_formats_limit_what_is_decoded_and_errors_say_their_kind():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PPM")
    ppm = ImageSource("upload.ppm", "bytes", buf.getvalue())
    assert load_image(ppm).size == (8, 8)
    with pytest.raises(ImageLoadError, match="upload.ppm: PPM images are not accepted \\(allowed: JPEG, PNG\\)") as e:
        load_image(ppm, formats=("png", "JPEG"))
    assert e.value.kind == "format"
    with pytest.raises(ImageLoadError) as e:
        load_image(ppm, max_pixels=10)
    assert e.value.kind == "too_large"
    with pytest.raises(ImageLoadError) as e:
        load_image(ImageSource("junk", "bytes", b"junk"), formats=("PNG",))
    assert e.value.kind == "invalid"


def test_multi_picture_jpegs_count_as_jpeg():
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="MPO", save_all=True, append_images=frames[1:])
    src = ImageSource("camera.jpg", "bytes", buf.getvalue())
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    assert load_image(src, formats=("JPEG",)).getpixel((0, 0))[0] > 240  # the first picture: red
    with pytest.raises(ImageLoadError, match="MPO images are not accepted"):
        load_image(src, formats=("PNG",))


# --- reducing to what the models need (issue 28) -----------------------------------------------------


def _encoded(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def test_reduce_to_keeps_the_shorter_side_at_least_the_side():
    data = _encoded(_gradient((1000, 700)), "PNG")
    full = load_image(ImageSource("big.png", "bytes", data))
    small = load_image(ImageSource("big.png", "bytes", data), reduce_to=224)
    assert full.size == (1000, 700)
    assert small.size == (334, 234) and small.mode == "RGB"  # 700 // 224 = 3: the box-reduced image
    assert np.array_equal(np.asarray(small), np.asarray(full.reduce(3)))
    for kind, ref in (("pil", full), ("array", np.asarray(full))):  # every input kind, not only files
        assert load_image(ImageSource("x", kind, ref), reduce_to=224).size == (334, 234)


def test_images_under_twice_the_side_are_not_touched():
    for size in ((300, 300), (447, 900), (60, 4000)):
        data = _encoded(_gradient(size), "PNG")
        whole = load_image(ImageSource("x.png", "bytes", data))
        kept = load_image(ImageSource("x.png", "bytes", data), reduce_to=224)
        assert kept.size == whole.size and kept.tobytes() == whole.tobytes()


def test_jpegs_decode_reduced_with_draft():
    data = _encoded(_gradient((2000, 1600)), "JPEG", quality=90)
    im = load_image(ImageSource("big.jpg", "bytes", data), reduce_to=224)
    # draft's scale: a power of two (1600 // 224 = 7 -> 4): the decoder never builds the 2000x1600
    # frame; a box reduction of the full decode would have given 286x229 instead
    assert im.size == (500, 400)
    grey = load_image(ImageSource("grey.jpg", "bytes", _encoded(_gradient((2000, 1600)).convert("L"), "JPEG")),
                      reduce_to=224)
    assert grey.size == (500, 400) and grey.mode == "RGB"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_reduced_images_keep_their_exif_orientation(fmt):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = _encoded(Image.new("RGB", (1800, 1000), RED), fmt, exif=exif.tobytes())
    assert load_image(ImageSource("x", "bytes", data)).size == (1000, 1800)
    im = load_image(ImageSource("x", "bytes", data), reduce_to=224)
    assert im.width < im.height and min(im.size) >= 224 and min(im.size) < 448


def test_palette_and_transparency_are_reduced_after_conversion():
    p = Image.new("P", (900, 600), 0)
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.paste(1, (0, 0, 450, 600))
    data = _encoded(p, "PNG", transparency=0)  # the red half is transparent: white, not averaged indices
    im = load_image(ImageSource("p.png", "bytes", data), reduce_to=200)
    assert im.size == (300, 200) and im.mode == "RGB"
    assert _rgb(im, (10, 10)) == BLUE and _rgb(im, (290, 10)) == (255, 255, 255)
    stripes = Image.new("P", (900, 600), 0)  # red and blue columns: averaged as colours, purple
    stripes.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)  # (averaged indices would be green)
    stripes.putdata([0 if (k % 900) % 2 == 0 else 2 for k in range(900 * 600)])
    r, g, b = _rgb(load_image(ImageSource("s.png", "bytes", _encoded(stripes, "PNG")), reduce_to=200), (5, 5))
    assert g == 0 and r > 50 and b > 50


def test_reduce_to_must_be_a_positive_size():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="reduce_to"):
            load_image(ImageSource("x", "pil", Image.new("RGB", (8, 8))), reduce_to=bad)


def test_decode_slots_bound_the_decodes_the_threads_run_and_trim_after_a_wave():
    slots = images_mod.DecodeSlots(2, trim_after=1, trim_delay=0)
    data = _encoded(Image.new("L", (600, 500)), "PNG")
    with slots.hold(data):
        with slots.hold(data):
            assert slots.active == 2
            assert not slots._sem.acquire(blocking=False)  # a third decode waits for a slot
        assert slots.trims == 0  # one decode is still running: not the end of the wave
    assert slots.active == 0 and slots.peak == 2 and slots.trims == 1 and slots.since_trim == 0
    assert slots._sem.acquire(blocking=False)
    slots._sem.release()


def test_trim_memory_is_safe_to_call():
    assert images_mod.trim_memory() in (True, False)
    if sys.platform.startswith("linux") and os.path.exists("/lib/x86_64-linux-gnu/libc.so.6"):
        assert images_mod.trim_memory() is True
