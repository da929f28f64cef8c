"""Turn what the user passed (paths, folders, globs, URLs, bytes, PIL images) into image sources.

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
from typing import Literal, TypeAlias, cast

from PIL import Image

from image2prompt.errors import ImageLoadError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageInput",
    "ImageSource",
    "SourceKind",
    "coerce_source",
    "expand_sources",
    "is_image_filename",
    "is_url",
]

# Kept as a tuple too so messages list the extensions in a stable, readable order.
_EXTENSIONS_IN_ORDER = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IMAGE_EXTENSIONS: frozenset[str] = frozenset(_EXTENSIONS_IN_ORDER)

_GLOB_CHARS = ("*", "?", "[")

SourceKind: TypeAlias = Literal["path", "url", "bytes", "pil"]
ImageInput: TypeAlias = str | os.PathLike[str] | bytes | Image.Image


@dataclass(frozen=True)
class ImageSource:
    """One image to load.

    ``name`` is what to show the user (the path as given or found, the URL,
    ``"<bytes>"`` or ``"<PIL.Image>"``); ``ref`` is what the loader reads: a
    :class:`~pathlib.Path`, a URL string, ``bytes`` or a PIL image.
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


def coerce_source(item: ImageSource | ImageInput) -> ImageSource:
    """Wrap a single input as an :class:`ImageSource` without expanding folders or globs."""
    if isinstance(item, ImageSource):
        return item
    if isinstance(item, Image.Image):
        return ImageSource("<PIL.Image>", "pil", item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return ImageSource("<bytes>", "bytes", bytes(item))
    if isinstance(item, (str, os.PathLike)):
        raw = os.fsdecode(os.fspath(item))
        if is_url(raw):
            return ImageSource(raw, "url", raw)
        return ImageSource(raw, "path", Path(os.path.expanduser(raw)))
    raise TypeError(f"expected a path, URL, bytes or PIL.Image.Image, got {type(item).__name__}")


def expand_sources(
    inputs: Iterable[ImageInput] | ImageInput,
) -> Iterator[ImageSource | ImageLoadError]:
    """Expand inputs into image sources, in input order.

    * a folder is walked recursively; image files (by extension, any case) come out
      sorted by relative POSIX path; hidden files and folders are skipped;
    * a glob pattern (``*``, ``?``, ``[``) yields the image files it matches, sorted;
    * an existing file is yielded whatever its extension (it was named explicitly);
    * ``http://``/``https://`` strings, ``bytes`` and PIL images pass through.

    Missing paths, empty folders and patterns that match nothing are yielded as
    :class:`ImageLoadError`. A single input (not wrapped in a list) is accepted too.
    """
    # A bare str/bytes is iterable; iterating it would yield one source per character.
    items: Iterable[ImageInput]
    if isinstance(inputs, (str, bytes, bytearray, memoryview, os.PathLike, Image.Image)):
        items = [cast(ImageInput, inputs)]
    else:
        items = inputs
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            yield from _expand_path(os.fsdecode(os.fspath(item)))
        else:
            yield coerce_source(item)


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
