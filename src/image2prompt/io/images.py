"""Load any supported input as a fully decoded RGB ``PIL.Image.Image``.

Only PIL decodes data here (nothing is unpickled). Every failure becomes an
:class:`~image2prompt.errors.ImageLoadError` with a short, specific reason.
"""

from __future__ import annotations

import functools
import io
import os
import threading
import warnings
from collections.abc import Collection, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from image2prompt.errors import RAISE_MAX_PIXELS, ImageLoadError, one_line
from image2prompt.io.download import download_bytes
from image2prompt.io.sources import ImageInput, ImageSource, coerce_source, to_numpy

__all__ = ["DEFAULT_MAX_PIXELS", "DecodeSlots", "decoded_bytes", "input_side_of", "load_image",
           "open_file", "reduce_factor", "reduce_image", "trim_memory"]

DEFAULT_MAX_PIXELS = 64_000_000

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# PIL's bomb limit is a module global; it is only changed (briefly, under this lock) when the caller's
# max_pixels is looser than it. Reentrant: measuring a bomb nests.
_PIL_LIMIT_LOCK = threading.RLock()


def load_image(
    source: ImageSource | ImageInput,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    timeout: float = 30.0,
    formats: Collection[str] | None = None,
    reduce_to: int | None = None,
) -> Image.Image:
    """Load ``source`` as a new, fully decoded RGB image.

    EXIF orientation is applied, transparency is composited onto white, and animated images give their first
    frame. Images over ``max_pixels`` are rejected from their header, before decoding; ``None`` lifts the limit.
    ``timeout`` (seconds) applies to URL downloads. ``formats`` (PIL format names such as ``PNG``, ``JPEG``)
    limits the encoded formats accepted; default: any Pillow decodes.

    ``reduce_to`` (pixels; what :attr:`Interrogator.input_side` says the loaded models need) keeps a large image
    from being held at full size: one whose shorter side is at least twice ``reduce_to`` is reduced right after
    decoding by the largest whole factor that keeps its shorter side at least ``reduce_to`` (:func:`reduce_image`).
    A JPEG decodes reduced (at 1/2, 1/4 or 1/8, with Pillow's ``draft``), so it never exists at full size; other
    formats are decoded whole, then reduced. The models' own preprocessing still does the final resize (CLIP's
    resizes the shorter side and crops, BLIP's squashes; both only ever shrink from there), and an image whose
    shorter side is under twice ``reduce_to`` comes back exactly as without it. ``None`` (the default): full size.

    Arrays (numpy, or torch tensors, converted by duck typing) are HWC pixels: HW or HW1 grey, HW3 RGB or HW4
    RGBA, either ``uint8`` or floating point in [0, 1] (what ComfyUI passes). Other dtypes, other shapes, NaN and
    values outside [0, 1] are an :class:`ImageLoadError`.

    Raises:
        ImageLoadError: the input is missing, unreadable, too large or not a valid image.
    """
    src = coerce_source(source)
    ref = src.ref
    if reduce_to is not None and (isinstance(reduce_to, bool) or not isinstance(reduce_to, int) or reduce_to < 1):
        raise ValueError(f"reduce_to must be a positive number of pixels or None, got {reduce_to!r}")
    if src.kind == "pil" and isinstance(ref, Image.Image):
        return _normalise(ref, src.name, max_pixels, reduce_to)
    if src.kind == "array":
        return reduce_image(_from_array(ref, src.name, max_pixels), reduce_to)
    if src.kind == "bytes" and isinstance(ref, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(ref), src.name, max_pixels, formats, reduce_to)
    if src.kind == "url" and isinstance(ref, str):
        return _decode(io.BytesIO(download_bytes(ref, timeout)), src.name, max_pixels, formats, reduce_to)
    if src.kind == "path" and isinstance(ref, (str, os.PathLike)):
        with open_file(Path(ref), src.name) as fp:
            return _decode(fp, src.name, max_pixels, formats, reduce_to)
    raise TypeError(f"ImageSource of kind {src.kind!r} has a {type(ref).__name__} ref")


# Modes whose pixels Image.reduce may average as they are (palette indices, 1-bit and 16-bit
# data are converted to RGB first; a colour key is applied first, since averaging moves colours).
_REDUCIBLE_MODES = frozenset({"RGB", "RGBA", "RGBX", "L", "LA", "CMYK", "YCbCr", "I", "F"})


def decoded_bytes(image: Image.Image) -> int:
    """Bytes a decoded image holds (width × height × bytes a pixel): what memory budgets count.
    Pillow stores every multi-band mode, RGB included, at 4 bytes a pixel."""
    width, height = image.size
    mode = image.mode
    depth = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    return width * height * depth


def reduce_factor(size: tuple[int, int], side: int | None) -> int:
    """The largest whole factor that keeps the shorter side of ``size`` at least ``side`` (1: none)."""
    return 1 if side is None else max(1, min(size) // side)


def reduce_image(image: Image.Image, side: int | None) -> Image.Image:
    """``image`` reduced by :func:`reduce_factor` (box averaging), or ``image`` itself when that is 1.

    The shorter side stays at least ``side``, so a model that resizes to ``side`` (or less) still resizes from at
    least that many pixels. Only RGB-like modes are reduced here (others as they are).
    """
    factor = reduce_factor(image.size, side)
    if factor < 2 or image.mode not in _REDUCIBLE_MODES or "transparency" in image.info:
        return image
    return image.reduce(factor)


def input_side_of(holder: object) -> int | None:
    """The side to reduce images to for ``holder``'s models: its ``input_side`` (an :class:`~image2prompt.Interrogator`'s),
    or None when it has none or it is not a positive int (a stand-in, a plugin that does not say): images kept whole."""
    side = getattr(holder, "input_side", None) if holder is not None else None
    return side if isinstance(side, int) and not isinstance(side, bool) and side > 0 else None


def trim_memory() -> bool:
    """Give the C heap's free memory back to the system (glibc's ``malloc_trim``).

    Pillow allocates images in blocks that glibc serves from its heaps once its mmap threshold has grown past
    them (it grows with every large block freed), and glibc keeps what is freed there: after a wave of large
    decodes the process's RSS would stay at its peak. Returns whether anything could be done (False off glibc).
    It walks every heap, holding its lock: call it after a wave (:class:`DecodeSlots` does), not per image.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    try:
        trim(0)
    except Exception:  # noqa: BLE001  best effort
        return False
    return True


class DecodeSlots:
    """At most ``n`` full-size decodes at once, counted by the threads that decode.

    A server that bounds its decodes with an ``asyncio.Semaphore`` around ``run_in_threadpool`` loses the bound
    when a request is cancelled (the client went away): the slot is given back while the thread goes on
    decoding. ``with slots.hold(data):`` is held by the decoding thread itself, for as long as the decode runs.
    Once no decode has run for ``trim_delay`` seconds, and at least ``trim_after`` bytes were decoded at full
    size since the last trim, :func:`trim_memory` gives the freed heap back to the system: once per wave, not
    between two decodes of one (``trim_delay=0``: at once, when the last decode ends).
    """

    def __init__(self, n: int, *, trim_after: int = 64 * 1024 * 1024, trim_delay: float = 1.0) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"decode slots must be a positive integer, got {n!r}")
        self.n, self.trim_after, self.trim_delay = n, trim_after, trim_delay
        self._sem = threading.BoundedSemaphore(n)
        self._lock = threading.Lock()
        self._started = 0  # decodes begun, ever: a trim is for the quiet after the last of them
        self._timer: threading.Timer | None = None
        self.active = 0  # decodes running now
        self.peak = 0  # the most that ran at once
        self.since_trim = 0  # full-size bytes decoded since the last trim
        self.trims = 0

    @contextmanager
    def hold(self, data: bytes | bytearray | memoryview | None = None) -> Iterator[None]:
        """Hold a slot while decoding ``data`` (its header's size is what the trim counts)."""
        self._sem.acquire()
        with self._lock:
            self.active += 1
            self._started += 1
            self.peak = max(self.peak, self.active)
        try:
            yield
        finally:
            full = _encoded_pixels(data) * 4 if data is not None else 0
            with self._lock:
                self.active -= 1
                self.since_trim += full
                due = self.active == 0 and self.since_trim >= self.trim_after
                started = self._started
                if due and self.trim_delay > 0 and self._timer is None:
                    self._wait_for_quiet(started)
            self._sem.release()
            if due and self.trim_delay <= 0:
                self._trim_if_quiet(started)

    def _wait_for_quiet(self, started: int) -> None:
        """Trim after ``trim_delay`` seconds if no decode began meanwhile (called holding the lock)."""
        self._timer = threading.Timer(self.trim_delay, self._trim_if_quiet, (started,))
        self._timer.daemon = True
        self._timer.start()

    def _trim_if_quiet(self, started: int) -> None:
        with self._lock:
            self._timer = None
            if self.active or self.since_trim < self.trim_after:
                return  # a decode is running: its own end starts the next wait
            if self._started != started:  # decodes ran since: wait for the quiet after them
                self._wait_for_quiet(self._started)
                return
            self.since_trim = 0
            self.trims += 1
        trim_memory()


def _encoded_pixels(data: bytes | bytearray | memoryview) -> int:
    """Width × height from an encoded image's header (0 when it cannot be read)."""
    try:  # no change to PIL's global limit or the warning filters: other threads are decoding
        with Image.open(io.BytesIO(data)) as im:
            return int(im.size[0]) * int(im.size[1])
    except Exception:  # noqa: BLE001  best effort: only counts toward a trim
        return 0


@functools.cache
def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None (looked up once)."""
    try:
        import ctypes
        import ctypes.util

        if os.name != "posix":
            return None
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = getattr(libc, "malloc_trim", None)  # glibc only (not musl, not macOS)
        if fn is not None:
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
        return fn
    except (OSError, AttributeError, ImportError):
        return None


def open_file(path: Path, name: str) -> IO[bytes]:
    try:
        return open(path, "rb")
    except (FileNotFoundError, NotADirectoryError):
        raise ImageLoadError(name, "no such file") from None
    except IsADirectoryError:
        raise ImageLoadError(name, "is a directory") from None
    except PermissionError:
        # Windows reports opening a folder as a permission error.
        reason = "is a directory" if path.is_dir() else "permission denied"
        raise ImageLoadError(name, reason) from None
    except OSError as err:
        raise ImageLoadError(name, f"cannot read file ({err.strerror or err})") from None


def _decode(fp: IO[bytes], name: str, max_pixels: int | None,
            formats: Collection[str] | None = None, side: int | None = None) -> Image.Image:
    with _pil_limit_for(max_pixels):
        im = _open_header(fp, name, max_pixels)
        fmt = (im.format or "").upper()
        if formats is not None:
            allowed = sorted(f.upper() for f in formats)
            if fmt not in allowed and not (fmt == "MPO" and "JPEG" in allowed):  # cameras' multi-picture JPEGs
                raise ImageLoadError(name, f"{im.format or 'this'} images are not accepted (allowed: "
                                           f"{', '.join(allowed)})", kind="format")
        _check_size(im.size, name, max_pixels)
        try:
            if side is not None and fmt in ("JPEG", "MPO") and reduce_factor(im.size, side) >= 2:
                # Decode at 1/2, 1/4 or 1/8 scale: the shorter side stays at least `side`.
                im.draft(None, (side, side))
            im.load()
        except Image.DecompressionBombError:
            # Raised by formats whose frames or tiles exceed the header size.
            raise ImageLoadError(name, _too_large(im.size, max_pixels), kind="too_large") from None
        except MemoryError:
            raise ImageLoadError(name, "not enough memory to decode the image") from None
        except Exception as err:  # noqa: BLE001  PIL raises many types on bad data
            raise ImageLoadError(name, _corrupt(err)) from None
        return _normalise(im, name, max_pixels, side)


def _open_header(fp: IO[bytes], name: str, max_pixels: int | None) -> Image.Image:
    """Identify the image and read its header; pixels are not decoded yet."""
    try:
        with warnings.catch_warnings():
            # We check the size ourselves next, with a clearer message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except UnidentifiedImageError:
        reason = "empty file" if _is_empty(fp) else "not an image or unsupported format"
        raise ImageLoadError(name, reason) from None
    except Image.DecompressionBombError:
        # PIL refused before we saw the size; it only does so above 2x a limit that is
        # at least max_pixels, so the image is too large either way.
        raise ImageLoadError(name, _too_large(_header_size(fp), max_pixels), kind="too_large") from None
    except Exception as err:  # noqa: BLE001  PIL raises many types on bad headers
        raise ImageLoadError(name, _corrupt(err)) from None


def _is_empty(fp: IO[bytes]) -> bool:
    """True if the stream holds no bytes at all (an empty file, bytes or download)."""
    try:
        return fp.seek(0, io.SEEK_END) == 0
    except (OSError, ValueError):  # best effort: only used to word an error
        return False


def _header_size(fp: IO[bytes]) -> tuple[int, int] | None:
    """Reread just the header with PIL's limit lifted, to report the real W×H."""
    try:
        fp.seek(0)
        with _pil_limit(None):
            return Image.open(fp).size
    except Exception:  # noqa: BLE001  best effort: only used to word an error
        return None


def _check_size(size: tuple[int, int], name: str, max_pixels: int | None) -> None:
    if max_pixels is not None and size[0] * size[1] > max_pixels:
        raise ImageLoadError(name, _too_large(size, max_pixels), kind="too_large")


def _too_large(size: tuple[int, int] | None, max_pixels: int | None) -> str:
    dims = f"{size[0]}×{size[1]} pixels, " if size is not None else ""
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    # Worded for every front end (the CLI's option is --max-pixels, the library's argument max_pixels);
    # a front end may replace RAISE_MAX_PIXELS with its own setting's name.
    return f"image too large ({dims}limit {limit} pixels; {RAISE_MAX_PIXELS})"


def _corrupt(err: BaseException) -> str:
    message = " ".join(str(err).split()) or type(err).__name__
    if len(message) > 80:
        message = message[:77] + "..."
    return f"corrupt or truncated image ({message})"


def _pil_limit_for(max_pixels: int | None) -> AbstractContextManager[None]:
    current = Image.MAX_IMAGE_PIXELS
    if current is None or (max_pixels is not None and max_pixels <= current):
        # PIL's own limit is already no stricter than ours: leave the global alone.
        return nullcontext()
    return _pil_limit(max_pixels)


@contextmanager
def _pil_limit(max_pixels: int | None) -> Iterator[None]:
    """Temporarily set PIL's bomb limit; restored on exit, even on error."""
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _from_array(ref: object, name: str, max_pixels: int | None) -> Image.Image:
    """An HWC pixel array (uint8, or float in [0, 1]) as a new RGB image."""
    try:
        arr = to_numpy(ref)
    except Exception as err:  # noqa: BLE001  a tensor type numpy cannot hold
        raise ImageLoadError(name, f"cannot read the array ({one_line(err, 120)})") from None
    shape = "×".join(str(d) for d in arr.shape)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):  # grey, RGB, RGBA
        raise ImageLoadError(name, f"unsupported array shape {shape or '()'} "
                                   "(expected H×W, H×W×1, H×W×3 or H×W×4 pixels; a batch is B×H×W×C)")
    height, width = int(arr.shape[0]), int(arr.shape[1])
    if height == 0 or width == 0:
        raise ImageLoadError(name, f"empty image (array shape {shape})")
    _check_size((width, height), name, max_pixels)
    if arr.dtype == np.uint8:
        pixels = np.array(arr, dtype=np.uint8, order="C", copy=True)  # never share the caller's memory
    elif np.issubdtype(arr.dtype, np.floating):
        values = arr.astype(np.float32, copy=False)
        if not np.isfinite(values).all():
            raise ImageLoadError(name, "float array contains NaN or infinite values")
        lo, hi = float(values.min()), float(values.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageLoadError(name, f"float pixel values must be in [0, 1], got {lo:g} to {hi:g} "
                                       "(pass uint8 for 0-255 data)")
        pixels = np.ascontiguousarray(np.rint(values * 255.0).astype(np.uint8))
    else:
        raise ImageLoadError(name, f"unsupported array dtype {arr.dtype} (expected uint8, or float in [0, 1])")
    try:
        im = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)  # L, RGB or RGBA
        return _to_rgb(im, name)
    except ImageLoadError:
        raise
    except MemoryError:
        raise ImageLoadError(name, "not enough memory to decode the image") from None
    except Exception as err:  # noqa: BLE001
        raise ImageLoadError(name, f"cannot read the array ({one_line(err, 120)})") from None


def _normalise(im: Image.Image, name: str, max_pixels: int | None, side: int | None = None) -> Image.Image:
    """Apply EXIF orientation and convert to RGB, always returning a new image; with ``side``, reduce it first
    (:func:`reduce_image`), so no further full-size copy is made."""
    _check_size(im.size, name, max_pixels)
    try:
        im.load()  # a caller's PIL image may still be lazy
        im = reduce_image(im, side)  # EXIF travels with it; orientation keeps the shorter side
        oriented = ImageOps.exif_transpose(im)  # a copy even when nothing changes
        rgb = reduce_image(_to_rgb(oriented, name), side)  # modes reduce_image left alone, now RGB
    except ImageLoadError:
        raise
    except MemoryError:
        raise ImageLoadError(name, "not enough memory to decode the image") from None
    except Exception as err:  # noqa: BLE001  bad EXIF or pixel data
        raise ImageLoadError(name, _corrupt(err)) from None
    return rgb


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in ("I", "F") or mode.startswith("I;"):
        return _high_depth_to_rgb(im)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        # Composite instead of dropping alpha: transparent pixels are often black underneath.
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError:
        raise ImageLoadError(name, f"unsupported colour mode {mode}") from None


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    """Map 16/32-bit integer and float greyscale to 8 bits (PIL's convert just clips)."""
    values = np.asarray(im, dtype=np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
        scaled = values / 257.0  # 16-bit data: 65535 -> 255
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        scaled = values * 255.0
    elif lo >= 0 and hi <= 255:
        scaled = values
    elif hi > lo:
        scaled = (values - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(values)
    grey = np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
