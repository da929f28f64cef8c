"""Turn what the user passed (paths, folders, globs, URLs, bytes, PIL images, arrays) into image sources.

Nothing here opens an image; :mod:`image2prompt.io.images` does the decoding. Problems with one input are
*yielded* as :class:`~image2prompt.errors.ImageLoadError` instead of raised, so a batch carries on past a bad entry.
"""

from __future__ import annotations

import functools
import glob
import inspect
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Literal, TypeAlias, cast

import numpy as np
from PIL import Image, ImageFile

from image2prompt.errors import ImageLoadError

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",  # noqa: F822  computed on first use, by the module's __getattr__
    "ImageInput", "ImageSource", "SourceKind", "coerce_source", "expand_sources", "image_extensions",
    "is_array", "is_image_filename", "is_torch_tensor", "is_url", "to_numpy",
]

# Formats Pillow can identify but not decode without a plug-in or an outside program: a folder scan leaves
# their files alone instead of failing on them.
_IDENTIFY_ONLY = frozenset({"MPEG"})
_SKIPPED = "not an image file Pillow can open"
_MAX_LISTED_EXTENSIONS = 8

_GLOB_CHARS = ("*", "?", "[")

SourceKind: TypeAlias = Literal["path", "url", "bytes", "pil", "array"]
#: A path, URL, encoded bytes, a PIL image, or an HWC pixel array (numpy, or a torch tensor: recognised by
#: duck typing, so this module never imports torch).
ImageInput: TypeAlias = str | os.PathLike[str] | bytes | Image.Image | np.ndarray | Any


@dataclass(frozen=True)
class ImageSource:
    """One image to load.

    ``name`` is what to show the user (the path as given or found, the URL, ``"<bytes>"``, ``"<PIL.Image>"``,
    ``"<array>"`` or ``"<array N>"`` for image N of a ``[B,H,W,C]`` batch); ``ref`` is what the loader reads: a
    :class:`~pathlib.Path`, a URL string, ``bytes``, a PIL image or a numpy array (torch tensors are converted).
    ``caption`` is a caption that came with the image (a manifest's caption column, a WebDataset sample's text),
    used instead of a generated one; ``meta`` is whatever the caller wants back with the image's record
    (:attr:`image2prompt.runner.Record.meta`).
    """

    name: str
    kind: SourceKind
    # repr=False: bytes or pixel data would flood logs and tracebacks.
    ref: object = field(repr=False)
    caption: str | None = field(default=None, repr=False)
    meta: object = field(default=None, repr=False, compare=False)


def is_url(text: str) -> bool:
    """True for ``http://`` and ``https://`` strings (scheme matched case-insensitively)."""
    return text[:8].lower().startswith(("http://", "https://"))


@functools.cache
def image_extensions() -> frozenset[str]:
    """The file extensions (lower case, with the dot) of every format the installed Pillow can decode.

    Read from Pillow's registry the first time it is needed (loading all of Pillow's plug-ins), then kept: a
    format registered later is still opened when a file is named explicitly, but is not picked up by folder scans
    and globs. Formats Pillow can only identify (HDF5, BUFR, GRIB and WMF without a handler, MPEG, EPS without
    Ghostscript) are left out. Also available as the module attribute ``IMAGE_EXTENSIONS``.
    """
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if _can_decode(fmt))


def _can_decode(fmt: str) -> bool:
    opener = Image.OPEN.get(fmt)
    if opener is None or fmt in _IDENTIFY_ONLY:
        return False
    factory = opener[0]
    if inspect.isclass(factory) and issubclass(factory, ImageFile.StubImageFile):
        # A stub decodes only once an application registers a handler for it.
        return getattr(sys.modules.get(factory.__module__), "_handler", None) is not None
    if fmt == "EPS":
        from PIL import EpsImagePlugin

        return bool(EpsImagePlugin.has_ghostscript())
    return True


def __getattr__(name: str) -> frozenset[str]:
    # IMAGE_EXTENSIONS is computed on first use: importing this module stays cheap.
    if name == "IMAGE_EXTENSIONS":
        return image_extensions()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_image_filename(name: str | os.PathLike[str]) -> bool:
    """True if the file name ends with one of :func:`image_extensions` (any case)."""
    return os.path.splitext(os.fspath(name))[1].lower() in image_extensions()


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

    * a folder is walked recursively; image files (by extension, any case: every format the installed Pillow
      decodes, see :func:`image_extensions`) come out sorted by relative POSIX path; other files are skipped,
      each logged at INFO level; hidden files and folders are skipped silently; links to folders are followed,
      each real folder once (a link that loops back, or reaches a folder walked already, is skipped and logged);
    * a glob pattern (``*``, ``?``, ``[``) yields the image files it matches, sorted (the other files it
      matches are logged at INFO level);
    * an existing file is yielded whatever its extension (it was named explicitly);
    * ``http://``/``https://`` strings, ``bytes`` and PIL images pass through;
    * a numpy array or torch tensor is one image (HW, HW1, HW3 or HW4), except a 4-D ``[B,H,W,C]`` batch,
      which gives its B images, named ``<array 0>`` ... ``<array B-1>``;
    * :class:`ImageSource` items pass through, and so do :class:`ImageLoadError` items (what an earlier
      expansion yielded), so expanded inputs can be expanded again.

    Missing paths, empty folders and patterns that match nothing are yielded as :class:`ImageLoadError`. A
    single input (not wrapped in a list) is accepted too. Expansion is lazy: inputs are read one at a time, so
    they may be a long generator.
    """
    # A bare str/bytes is iterable: iterating it would yield one source per character (an array: its rows).
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
    # (relative POSIX path for sorting, relative native path)
    found: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    hidden = 0
    walk_errors: list[OSError] = []
    # Links to folders are followed; each real folder is walked once (a link back up the tree, or a second
    # link to a folder already walked, is skipped and named at INFO level).
    seen = {_folder_key(root)}
    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_errors.append, followlinks=True):
        hidden_dirs = [d for d in dirnames if d.startswith(".")]
        hidden += len(hidden_dirs)
        dirnames.sort(key=lambda d: (os.path.islink(os.path.join(dirpath, d)), d))  # real folders before links
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and _first_visit(name, root, dirpath, d, seen)]
        for filename in filenames:
            rel = os.path.relpath(os.path.join(dirpath, filename), root)
            if filename.startswith("."):
                hidden += 1
                logger.debug("skipping %s: hidden file", os.path.join(name, rel))
                continue
            (found if is_image_filename(filename) else skipped).append((PurePath(rel).as_posix(), rel))
        for d in hidden_dirs:
            rel_dir = os.path.relpath(os.path.join(dirpath, d), root)
            logger.debug("skipping %s: hidden folder", os.path.join(name, rel_dir))
    for _, rel in sorted(skipped):
        logger.info("skipping %s: %s", os.path.join(name, rel), _SKIPPED)
    found.sort()
    for _, rel in found:
        yield ImageSource(os.path.join(name, rel), "path", Path(root, rel))
    for err in walk_errors:
        where = os.fsdecode(err.filename) if err.filename is not None else name
        yield ImageLoadError(where, f"cannot read folder ({_os_reason(err)})")
    if not found and not walk_errors:
        if skipped:
            reason = f"folder contains no images ({_found_files([rel for _, rel in skipped])})"
        elif hidden:
            reason = "folder contains no images (only hidden files, which are skipped)"
        else:
            reason = "folder is empty"
        yield ImageLoadError(name, reason)


def _folder_key(path: str) -> tuple[int, int] | str:
    """What identifies a folder however it is reached: its device and inode (else its real path)."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(path)


def _first_visit(name: str, root: str, dirpath: str, d: str, seen: set[tuple[int, int] | str]) -> bool:
    """True the first time a walk reaches this folder; a link to one already walked is named (INFO)."""
    full = os.path.join(dirpath, d)
    key = _folder_key(full)
    if key in seen:
        rel = os.path.relpath(full, root)
        logger.info("skipping %s: a link to a folder walked already (%s)", os.path.join(name, rel),
                    os.path.realpath(full))
        return False
    seen.add(key)
    return True


def _found_files(paths: list[str]) -> str:
    """``found 3 files: .txt, .json``: the extensions of files that are not images, most common first."""
    counts = Counter(os.path.splitext(os.path.basename(p))[1].lower() for p in paths)
    ordered = sorted(counts, key=lambda ext: (-counts[ext], ext == "", ext))
    listed = [ext or "no extension" for ext in ordered[:_MAX_LISTED_EXTENSIONS]]
    rest = len(ordered) - len(listed)
    text = ", ".join(listed)
    if rest:
        text += f" and {rest} other extension{'s' if rest != 1 else ''}"
    n = len(paths)
    return f"found {n} file{'s' if n != 1 else ''}: {text}"


def _expand_glob(pattern: str, expanded: str) -> Iterator[ImageSource | ImageLoadError]:
    matches = glob.glob(expanded, recursive=True)
    if not matches:
        yield ImageLoadError(pattern, "pattern matched no files")
        return
    # Folders are skipped: "**" matches every folder as well as the files inside them.
    all_files = [m for m in matches if os.path.isfile(m)]
    files = [m for m in all_files if is_image_filename(m)]
    others = sorted((m for m in all_files if not is_image_filename(m)), key=lambda m: PurePath(m).as_posix())
    for other in others:
        logger.info("skipping %s: %s", other, _SKIPPED)
    for match in sorted(files, key=lambda m: PurePath(m).as_posix()):
        yield ImageSource(match, "path", Path(match))
    if not files:
        yield ImageLoadError(pattern, "pattern matched no image files" + (f" ({_found_files(others)})" if others else ""))


def _os_reason(err: OSError) -> str:
    return "permission denied" if isinstance(err, PermissionError) else (err.strerror or str(err)).lower()
