"""Pixel arrays as inputs: numpy, and torch tensors by duck typing (what ComfyUI and uploads hand over)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from image2prompt.errors import ImageLoadError
from image2prompt.io import (
    ImageSource,
    coerce_source,
    expand_sources,
    load_image,
)


def _pixels(h: int = 6, w: int = 7) -> np.ndarray:
    rng = np.random.RandomState(0)
    return (rng.rand(h, w, 3) * 255).astype(np.uint8)


def _err(source: object, **kwargs: object) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(source, **kwargs)  # type: ignore[arg-type]
    return info.value


def test_uint8_and_float_hwc_give_the_same_image() -> None:
    px = _pixels()
    from_uint8 = load_image(px)
    from_float = load_image(px.astype(np.float32) / 255.0)
    from_f16 = load_image((px.astype(np.float64) / 255.0).astype(np.float16))
    assert from_uint8.mode == "RGB" and from_uint8.size == (7, 6)
    assert np.array_equal(np.asarray(from_uint8), px)
    assert np.array_equal(np.asarray(from_float), px)
    assert np.abs(np.asarray(from_f16).astype(int) - px).max() <= 1


def test_array_image_is_detached_from_the_caller() -> None:
    px = _pixels()
    im = load_image(px)
    px[:] = 0
    assert np.asarray(im).any()


def test_non_contiguous_array() -> None:
    px = _pixels(8, 8)
    view = px[::2, ::-1]
    assert np.array_equal(np.asarray(load_image(view)), view)


@pytest.mark.parametrize("shape", [(5, 4), (5, 4, 1)])
def test_grey_becomes_rgb(shape: tuple[int, ...]) -> None:
    grey = np.full(shape, 0.5, np.float32)
    im = load_image(grey)
    assert im.mode == "RGB" and im.size == (4, 5) and im.getpixel((0, 0)) == (128, 128, 128)


def test_rgba_is_composited_on_white() -> None:
    px = np.zeros((3, 3, 4), np.uint8)
    px[0, 0] = (255, 0, 0, 255)  # opaque red
    px[1, 1] = (0, 0, 255, 0)  # fully transparent blue
    im = load_image(px)
    assert im.mode == "RGB"
    assert im.getpixel((0, 0)) == (255, 0, 0)
    assert im.getpixel((1, 1)) == (255, 255, 255)


@pytest.mark.parametrize(("array", "words"), [
    (np.full((4, 4, 3), 2.0, np.float32), "must be in [0, 1], got 2 to 2"),
    (np.full((4, 4, 3), -0.5), "must be in [0, 1]"),
    (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
    (np.full((4, 4, 3), np.inf), "infinite"),
    (np.zeros((4, 4, 3), np.int64), "unsupported array dtype int64"),
    (np.zeros((4, 4, 3), bool), "unsupported array dtype bool"),
    (np.zeros((4, 4, 2), np.uint8), "unsupported array shape 4×4×2"),
    (np.zeros((3, 4, 4, 3, 1), np.uint8), "unsupported array shape"),
    (np.zeros(5, np.uint8), "unsupported array shape 5"),
    (np.zeros((0, 4, 3), np.uint8), "empty image"),
])
def test_bad_arrays_are_one_line_load_errors(array: np.ndarray, words: str) -> None:
    err = _err(array)
    assert err.source == "<array>"
    assert words in err.reason
    assert "\n" not in str(err)


def test_array_max_pixels() -> None:
    err = _err(np.zeros((100, 100, 3), np.uint8), max_pixels=5000)
    assert "too large" in err.reason and "100×100" in err.reason
    assert load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=None).size == (100, 100)


def test_coerce_names_a_single_array() -> None:
    src = coerce_source(_pixels())
    assert src.kind == "array" and src.name == "<array>"
    assert repr(src) == "ImageSource(name='<array>', kind='array')"


def test_bare_array_is_one_input_and_a_batch_expands() -> None:
    (one,) = expand_sources(_pixels())  # not iterated row by row
    assert isinstance(one, ImageSource) and one.name == "<array>"
    batch = np.stack([_pixels(), _pixels()[::-1]]).astype(np.float32) / 255
    items = list(expand_sources(batch))
    assert [i.name for i in items if isinstance(i, ImageSource)] == ["<array 0>", "<array 1>"]
    assert np.array_equal(np.asarray(load_image(items[1])), _pixels()[::-1])
    mixed = list(expand_sources([batch, _pixels(), Image.new("RGB", (2, 2))]))
    assert [i.name for i in mixed if isinstance(i, ImageSource)] == ["<array 0>", "<array 1>", "<array>",
                                                                     "<PIL.Image>"]


def test_empty_batch_is_an_error_item() -> None:
    (item,) = expand_sources(np.zeros((0, 4, 4, 3), np.float32))
    assert isinstance(item, ImageLoadError) and "empty batch" in item.reason


def test_expansion_passes_sources_and_errors_through(tmp_path: object) -> None:
    first = list(expand_sources([_pixels(), "/no/such/file.png"]))
    again = list(expand_sources(first))
    assert again == first
    (single,) = expand_sources(first[0])  # a bare ImageSource is one input
    assert single is first[0]


def test_torch_tensors_by_duck_typing() -> None:
    torch = pytest.importorskip("torch")
    px = _pixels()
    t = torch.from_numpy(px.astype(np.float32) / 255.0)
    assert np.array_equal(np.asarray(load_image(t)), px)
    assert np.array_equal(np.asarray(load_image(torch.from_numpy(px))), px)
    bf16 = load_image(t.to(torch.bfloat16))  # numpy has no bfloat16: converted through float32
    assert np.abs(np.asarray(bf16).astype(int) - px).max() <= 2
    batch = torch.stack([t, t.flip(0)])  # [B, H, W, C], ComfyUI's IMAGE layout
    items = list(expand_sources(batch))
    assert [i.name for i in items if isinstance(i, ImageSource)] == ["<array 0>", "<array 1>"]
    assert np.array_equal(np.asarray(load_image(items[1])), px[::-1])
    grad = t.clone().requires_grad_(True)
    assert load_image(grad).size == (7, 6)
    err = _err(torch.full((3, 3, 3), 1.5))
    assert "must be in [0, 1]" in err.reason


def test_arrays_do_not_import_torch() -> None:
    code = (
        "import sys, numpy as np\n"
        "from image2prompt.io import load_image, expand_sources\n"
        "list(expand_sources(np.zeros((2, 4, 4, 3), np.float32)))\n"
        "load_image(np.zeros((4, 4, 3), np.uint8))\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
