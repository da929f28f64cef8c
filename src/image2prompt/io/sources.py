"""Turn what the user passed (paths, folders, globs, URLs, bytes, PIL images, arrays) into image sources.

Nothing here opens an image; :mod:`image2prompt.io.images` does the decoding.
Problems with one input are *yielded* as :class:`~image2prompt.errors.ImageLoadError`
instead of raised, so a batch carries on past a bad entry.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Literal, TypeAlias, cast

import numpy as np
from PIL import Image

from image2prompt.errors import ImageLoadError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageInput",
    "ImageSource",
    "SourceKind",
    "coerce_source",
    "expand_sources",
    "is_array",
    "is_image_filename",
    "is_torch_tensor",
    "is_url",
    "to_numpy",
]

# Kept as a tuple too so messages list the extensions in a stable, readable order.
_EXTENSIONS_IN_ORDER = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IMAGE_EXTENSIONS: frozenset[str] = frozenset(_EXTENSIONS_IN_ORDER)

_GLOB_CHARS = ("*", "?", "[")

SourceKind: TypeAlias = Literal["path", "url", "bytes", "pil", "array"]
#: A path, URL, encoded bytes, a PIL image, or an HWC pixel array (numpy, or a torch tensor:
#: recognised by duck typing, so this module never imports torch).
ImageInput: TypeAlias = str | os.PathLike[str] | bytes | Image.Image | np.ndarray | Any


@dataclass(frozen=True)
class ImageSource:
    """One image to load.

    ``name`` is what to show the user (the path as given or found, the URL,
    ``"<bytes>"``, ``"<PIL.Image>"``, ``"<array>"`` or ``"<array N>"`` for image N of a
    ``[B,H,W,C]`` batch); ``ref`` is what the loader reads: a :class:`~pathlib.Path`, a
    URL string, ``bytes``, a PIL image or a numpy array (torch tensors are converted).
    """

    name: str
    kind: SourceKind
    # repr=False: bytes or pixel data would flood logs and tracebacks.
    ref: object = field(repr=False)


def is_url(text: str) -> bool:
    """True for ``http://`` and ``https://`` strings (scheme matched case-insensitively)."""
    return text[:8].lower().startswith(("http://", "https://"))


def is_image_filename(name: str | os.PathLike[str]) -> bool:
    """True if the file name ends with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return os.path.splitext(os.fspath(name))[1].lower() in IMAGE_EXTENSIONS


def is_torch_tensor(item: object) -> bool:
    """True for a torch tensor, found by duck typing (torch is never imported here)."""
    return type(item).__module__.startswith("torch") and hasattr(item, "detach") and hasattr(item, "numpy")


def is_array(item: object) -> bool:
    """True for a numpy array or a torch tensor (pixel data, see :func:`to_numpy`)."""
    return isinstance(item, np.ndarray) or is_torch_tensor(item)


def to_numpy(item: Any) -> np.ndarray:
    """A numpy view or copy of a numpy array or torch tensor (detached, moved to the CPU)."""
    if isinstance(item, np.ndarray):
        return item
    tensor = item.detach()
    if str(getattr(tensor, "dtype", "")) == "torch.bfloat16":  # numpy has no bfloat16
        tensor = tensor.float()
    return cast(np.ndarray, tensor.cpu().numpy())


def coerce_source(item: ImageSource | ImageInput) -> ImageSource:
    """Wrap a single input as an :class:`ImageSource` without expanding folders or globs.

    An array is taken as one image (a ``[B,H,W,C]`` batch is split by :func:`expand_sources`).
    """
    if isinstance(item, ImageSource):
        return item
    if isinstance(item, Image.Image):
        return ImageSource("<PIL.Image>", "pil", item)
    if is_array(item):
        return ImageSource("<array>", "array", to_numpy(item))
    if isinstance(item, (bytes, bytearray, memoryview)):
        return ImageSource("<bytes>", "bytes", bytes(item))
    if isinstance(item, (str, os.PathLike)):
        raw = os.fsdecode(os.fspath(item))
        if is_url(raw):
            return ImageSource(raw, "url", raw)
        return ImageSource(raw, "path", Path(os.path.expanduser(raw)))
    raise TypeError(f"expected a path, URL, bytes, PIL.Image.Image or an array, got {type(item).__name__}")


def expand_sources(
    inputs: Iterable[ImageInput] | ImageInput,
) -> Iterator[ImageSource | ImageLoadError]:
    """Expand inputs into image sources, in input order.

    * a folder is walked recursively; image files (by extension, any case) come out
      sorted by relative POSIX path; hidden files and folders are skipped;
    * a glob pattern (``*``, ``?``, ``[``) yields the image files it matches, sorted;
    * an existing file is yielded whatever its extension (it was named explicitly);
    * ``http://``/``https://`` strings, ``bytes`` and PIL images pass through;
    * a numpy array or torch tensor is one image (HW, HW1, HW3 or HW4), except a 4-D
      ``[B,H,W,C]`` batch, which gives its B images, named ``<array 0>`` ... ``<array B-1>``;
    * :class:`ImageSource` items pass through, and so do :class:`ImageLoadError` items
      (what an earlier expansion yielded), so expanded inputs can be expanded again.

    Missing paths, empty folders and patterns that match nothing are yielded as
    :class:`ImageLoadError`. A single input (not wrapped in a list) is accepted too.
    Expansion is lazy: inputs are read one at a time, so they may be a long generator.
    """
    # A bare str/bytes is iterable; iterating it would yield one source per character,
    # and iterating an array would yield its rows.
    items: Iterable[ImageInput]
    if isinstance(inputs, (str, bytes, bytearray, memoryview, os.PathLike, Image.Image, ImageSource)) \
            or is_array(inputs):
        items = [cast(ImageInput, inputs)]
    else:
        items = inputs
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            yield from _expand_path(os.fsdecode(os.fspath(item)))
        elif isinstance(item, ImageLoadError):
            yield item
        elif is_array(item) and len(getattr(item, "shape", ())) == 4:
            yield from _expand_batch(item)
        else:
            yield coerce_source(item)


def _expand_batch(batch: Any) -> Iterator[ImageSource | ImageLoadError]:
    """The images of a ``[B,H,W,C]`` array or tensor, each converted when it is reached."""
    count = int(batch.shape[0])
    if count == 0:
        yield ImageLoadError("<array>", "empty batch (shape " + "×".join(str(int(d)) for d in batch.shape) + ")")
        return
    for i in range(count):
        yield ImageSource(f"<array {i}>", "array", to_numpy(batch[i]))


def _expand_path(raw: str) -> Iterator[ImageSource | ImageLoadError]:
    if is_url(raw):
        yield ImageSource(raw, "url", raw)
        return
    path = os.path.expanduser(raw)
    if os.path.isdir(path):
        yield from _walk_folder(raw, path)
    elif os.path.exists(path):
        yield ImageSource(raw, "path", Path(path))
    # Checked after existence so a real file whose name contains "[" still works.
    elif any(ch in raw for ch in _GLOB_CHARS):
        yield from _expand_glob(raw, path)
    else:
        yield ImageLoadError(raw, "no such file or directory")


def _walk_folder(name: str, root: str) -> Iterator[ImageSource | ImageLoadError]:
    found: list[tuple[str, str]] = []  # (relative POSIX path for sorting, relative native path)
    walk_errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_errors.append):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            if filename.startswith(".") or not is_image_filename(filename):
                continue
            rel = os.path.relpath(os.path.join(dirpath, filename), root)
            found.append((PurePath(rel).as_posix(), rel))
    found.sort()
    for _, rel in found:
        yield ImageSource(os.path.join(name, rel), "path", Path(root, rel))
    for err in walk_errors:
        where = os.fsdecode(err.filename) if err.filename is not None else name
        yield ImageLoadError(where, f"cannot read folder ({_os_reason(err)})")
    if not found and not walk_errors:
        looked_for = ", ".join(_EXTENSIONS_IN_ORDER)
        yield ImageLoadError(name, f"folder contains no images (looked for {looked_for})")


def _expand_glob(pattern: str, expanded: str) -> Iterator[ImageSource | ImageLoadError]:
    matches = glob.glob(expanded, recursive=True)
    if not matches:
        yield ImageLoadError(pattern, "pattern matched no files")
        return
    # Folders are skipped: "**" matches every folder as well as the files inside them.
    files = [m for m in matches if os.path.isfile(m) and is_image_filename(m)]
    if not files:
        yield ImageLoadError(pattern, "pattern matched no image files")
        return
    for match in sorted(files, key=lambda m: PurePath(m).as_posix()):
        yield ImageSource(match, "path", Path(match))


def _os_reason(err: OSError) -> str:
    if isinstance(err, PermissionError):
        return "permission denied"
    return (err.strerror or str(err)).lower()
