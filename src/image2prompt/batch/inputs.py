"""The inputs of ``image2prompt batch``: image files, folders, globs, lists, manifests, shards and URLs.

:func:`iter_inputs` turns what the user named into :class:`InputItem` objects, lazily and in input order.
Nothing is decoded here, and no image bytes are read until an item's ``read()`` is called, except for
WebDataset shards: a tar stream cannot go back, so a member's bytes are read when its item is produced
(one sample at a time) and kept in the item. Nothing is ever extracted to disk or unpickled.

Kinds of input (told apart by what exists on disk and by the name's extension):

* image files, folders (recursive) and glob patterns: as :func:`image2prompt.io.expand_sources`;
* ``.txt`` / ``.lst`` files: lists, one path or URL per line (``#`` comments and blank lines skipped;
  relative entries resolve against the list's folder; a folder, glob, list, manifest or shard in a
  list expands as it would on the command line);
* ``.csv`` / ``.tsv`` / ``.parquet`` files: manifests with a path or URL column (named by ``column``
  or found among :data:`PATH_COLUMNS`) and an optional caption column (:data:`CAPTION_COLUMNS`);
* ``.tar`` (also ``.tar.gz``, ``.tgz``) files: WebDataset shards in the img2dataset layout
  (``KEY.jpg`` with an optional ``KEY.txt`` caption; other members are ignored). A glob
  or a brace range (``data/{00000..00010}.tar``) of lists, manifests or shards works too;
  a source named ``shard.tar/KEY.jpg`` (as a failure list holds it) reads that member, and
  one named ``manifest.csv:17`` (a manifest row's name) reads that row of the manifest again;
* ``http://`` / ``https://`` URLs, downloaded with the limits of :mod:`image2prompt.io.images`
  only when ``allow_urls`` is set; other schemes are refused.

Problems with one input become an item with ``error`` set, so a batch carries on; a problem with one
image's bytes is raised by its ``read()`` as an :class:`~image2prompt.errors.ImageLoadError`.

Why one module over 500 lines: every kind of input dispatches through one recursive
``_dispatch`` (a list may name a manifest that names a shard...), with one context of limits and
one way of wording a failure; split by kind, each part would import the others back.
"""

from __future__ import annotations

import csv
import glob
import itertools
import os
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO

from image2prompt.errors import Image2PromptError, ImageLoadError, one_line
from image2prompt.io import expand_sources
from image2prompt.io.download import download_bytes
from image2prompt.io.images import open_file
from image2prompt.io.sources import is_image_filename, is_url

__all__ = ["CAPTION_COLUMNS", "MAX_FILE_BYTES", "PATH_COLUMNS", "InputItem", "iter_inputs", "read_file"]

#: The largest image file (or shard member) read, in bytes.
MAX_FILE_BYTES = 256 * 1024 * 1024
#: Manifest columns tried, in order, when ``column`` is not given (matched case-insensitively).
#: ``file_name`` is what Hugging Face ``imagefolder`` metadata files use.
PATH_COLUMNS = ("path", "filepath", "file", "filename", "file_name", "image", "image_path", "url", "image_url")
#: Manifest columns that hold a caption (matched case-insensitively).
CAPTION_COLUMNS = ("caption", "text")
#: Rows per batch read from a Parquet manifest.
PARQUET_BATCH_ROWS = 1024
#: Seconds before a URL download gives up.
URL_TIMEOUT = 30.0

_MAX_CAPTION_BYTES = 1024 * 1024
_MAX_NESTING = 8
_MAX_LISTED_COLUMNS = 20
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
#: The kind of container a file's name ends with (what :func:`_container` reads it as).
_CONTAINERS = {".txt": "list", ".lst": "list", ".tar": "tar", ".tar.gz": "tar", ".tgz": "tar", ".csv": "csv",
               ".tsv": "tsv", ".parquet": "parquet"}
# What a damaged or truncated stream raises while it is read (zlib.error, lzma.LZMAError
# and gzip.BadGzipFile come wrapped in tarfile.ReadError or are OSError/EOFError).
_DAMAGE: tuple[type[BaseException], ...] = (tarfile.TarError, EOFError, OSError, ValueError)


@dataclass(frozen=True)
class InputItem:
    """One image to interrogate, or one input that failed before any image was read.

    ``source`` is the name to show: the path or URL as given or found, ``shard.tar/KEY.jpg`` for a shard
    member, ``manifest.csv:17`` for a manifest row (CSV: line 17; Parquet: row 17) that names no image.
    Exactly one of ``read`` and ``error`` is set: ``read()`` returns the image's encoded bytes or raises
    :class:`ImageLoadError` with a one-line reason; ``error`` says why the input gave no image at all.
    ``path`` is the local image file (sidecars go beside it), else ``None``; ``caption`` is a caption
    shipped with the input, else ``None``; ``origin`` is the manifest row (``manifest.csv:17``) an
    image came from, else ``None``.
    """

    source: str
    read: Callable[[], bytes] | None = None
    error: ImageLoadError | None = None
    path: Path | None = None
    caption: str | None = None
    origin: str | None = None

    def __post_init__(self) -> None:
        if (self.read is None) == (self.error is None):
            raise ValueError("InputItem needs exactly one of read and error")


def iter_inputs(inputs: Sequence[str], *, allow_urls: bool = False, column: str | None = None,
                caption_column: str | None = None) -> Iterator[InputItem]:
    """Every image the inputs name, as :class:`InputItem` objects, lazily and in input order.

    ``allow_urls`` lets ``http://`` and ``https://`` inputs (and list entries and manifest
    cells) be downloaded; without it each is an error item. ``column`` names the path or
    URL column of CSV and Parquet manifests (exact name first, then case-insensitively);
    without it the first of :data:`PATH_COLUMNS` present is used. ``caption_column`` names
    where each image's caption is: the manifest column of that name (a manifest without it is
    an error item) and, in WebDataset shards, the sample's member with that extension
    (``txt``: ``KEY.txt``); without it a manifest's caption is the first of
    :data:`CAPTION_COLUMNS` present, and a shard's the sample's ``KEY.txt``.

    Raises:
        Image2PromptError: a Parquet manifest is reached and pyarrow is not installed.
    """
    items: Iterable[str | os.PathLike[str]] = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs
    ctx = _Context(allow_urls=allow_urls, column=column, caption_column=caption_column)
    for raw in items:
        yield from _dispatch(os.fsdecode(os.fspath(raw)), ctx, ())


@dataclass(frozen=True)
class _Context:
    allow_urls: bool
    column: str | None
    caption_column: str | None = None


# --- dispatch --------------------------------------------------------------------


def _dispatch(name: str, ctx: _Context, parents: tuple[str, ...]) -> Iterator[InputItem]:
    """The items of one input: ``name`` is both what is shown and (``~`` expanded) what is read."""
    path = os.path.expanduser(name)
    if _SCHEME.match(name):
        yield _url_item(name, ctx)
    elif os.path.isfile(path) and _container_kind(path):
        yield from _container(name, path, ctx, parents)
    elif os.path.exists(path):
        yield from _from_sources(name)
    elif any(_alternatives(m.group(1)) is not None for m in _BRACE.finditer(name)):  # {a..b} or {x,y}
        for expanded in _expand_braces(name):
            yield from _dispatch(expanded, ctx, parents)
    elif any(ch in name for ch in "*?["):  # a glob
        if _container_kind(path):
            yield from _container_glob(name, path, ctx, parents)
        else:
            yield from _from_sources(name)
    else:
        yield _shard_member_item(name, path) or _manifest_row_item(name, path, ctx) \
            or _failed(name, "no such file or directory")


def _container_kind(path: str) -> str | None:
    lower = path.lower()
    return next((kind for suffix, kind in _CONTAINERS.items() if lower.endswith(suffix)), None)


def _container(name: str, path: str, ctx: _Context, parents: tuple[str, ...]) -> Generator[InputItem, None, None]:
    kind = _container_kind(path)
    real = os.path.realpath(path)
    if kind == "tar":
        yield from _iter_shard(name, path, ctx)
    elif kind in ("csv", "tsv"):
        yield from _iter_csv(name, path, ctx, "\t" if kind == "tsv" else ",")
    elif kind == "parquet":
        yield from _iter_parquet(name, path, ctx)
    elif real in parents:
        yield _failed(name, "list includes itself")
    elif len(parents) >= _MAX_NESTING:
        yield _failed(name, f"lists nested more than {_MAX_NESTING} deep")
    else:
        yield from _iter_list(name, path, ctx, (*parents, real))


def _container_glob(pattern: str, expanded: str, ctx: _Context, parents: tuple[str, ...]) -> Iterator[InputItem]:
    matches = sorted((m for m in glob.glob(expanded, recursive=True) if os.path.isfile(m)),
                     key=lambda m: Path(m).as_posix())
    for match in matches:
        yield from _container(match, match, ctx, parents)
    if not matches:
        yield _failed(pattern, "pattern matched no files")


def _from_sources(name: str) -> Iterator[InputItem]:
    """Image files, folders and globs, as :func:`image2prompt.io.expand_sources` finds them."""
    for src in expand_sources(name):
        if isinstance(src, ImageLoadError):
            yield InputItem(src.source, error=src)
        elif src.kind == "path" and isinstance(src.ref, Path):
            yield InputItem(src.name, read=partial(read_file, src.ref, src.name), path=src.ref)
        else:  # pragma: no cover - URLs are dispatched before expansion
            yield _failed(src.name, f"unsupported input kind {src.kind}")


def _failed(source: str, reason: str) -> InputItem:
    return InputItem(source, error=ImageLoadError(source, reason))


def _resolve(base: str, entry: str) -> str:
    """An entry of a list or manifest as a name: relative paths are taken from ``base``'s folder."""
    if _SCHEME.match(entry) or entry.startswith("~") or os.path.isabs(entry):
        return entry
    return os.path.join(os.path.dirname(base), entry)


# --- brace ranges ------------------------------------------------------------------


def _expand_braces(text: str, start: int = 0) -> Iterator[str]:
    """``a{1..3}b`` -> a1b a2b a3b, ``{00..10}`` keeps the zero padding, ``{x,y}`` -> x y; lazily."""
    for match in _BRACE.finditer(text, start):
        alternatives = _alternatives(match.group(1))
        if alternatives is None:  # "{}" or "{word}": literal text
            continue
        head, tail = text[: match.start()], text[match.end():]
        for alt in alternatives:
            yield from _expand_braces(head + alt + tail, len(head) + len(alt))
        return
    yield text


def _alternatives(body: str) -> Iterable[str] | None:
    span = _RANGE.match(body)
    if span:
        lo_text, hi_text = span.groups()
        lo, hi = int(lo_text), int(hi_text)
        padded = any(t.lstrip("-").startswith("0") and len(t.lstrip("-")) > 1 for t in (lo_text, hi_text))
        width = max(len(lo_text), len(hi_text)) if padded else 0
        step = 1 if hi >= lo else -1
        return (f"{n:0{width}d}" if width else str(n) for n in range(lo, hi + step, step))
    return body.split(",") if "," in body else None


# --- files and URLs ------------------------------------------------------------------


def read_file(path: Path, name: str) -> bytes:
    """A local image file's bytes, within :data:`MAX_FILE_BYTES`, or :class:`ImageLoadError` naming ``name``."""
    with open_file(path, name) as fp:
        try:
            if os.fstat(fp.fileno()).st_size > MAX_FILE_BYTES:
                raise ImageLoadError(name, _too_big())
            data = fp.read(MAX_FILE_BYTES + 1)
        except IsADirectoryError:
            raise ImageLoadError(name, "is a directory") from None
        except OSError as err:
            raise ImageLoadError(name, f"cannot read file ({err.strerror or one_line(err, 80)})") from None
    if len(data) > MAX_FILE_BYTES:  # grew since fstat
        raise ImageLoadError(name, _too_big())
    if not data:
        raise ImageLoadError(name, "empty file")
    return data


def _too_big() -> str:
    return f"file larger than the {MAX_FILE_BYTES // (1024 * 1024)} MB limit"


def _url_item(url: str, ctx: _Context, caption: str | None = None) -> InputItem:
    if not is_url(url):
        return _failed(url, f"unsupported URL scheme {url.split('://', 1)[0]}:// (only http:// and https:// are fetched)")
    if not ctx.allow_urls:
        return _failed(url, "URL inputs are off; pass --allow-urls to fetch them")

    def read() -> bytes:
        data = download_bytes(url, URL_TIMEOUT)
        if not data:
            raise ImageLoadError(url, "download failed: empty response")
        return data

    return InputItem(url, read=read, caption=caption)


# --- lists ---------------------------------------------------------------------------


def _iter_list(name: str, path: str, ctx: _Context, parents: tuple[str, ...]) -> Iterator[InputItem]:
    try:
        fp = open(path, "rb")
    except OSError as err:
        yield _failed(name, f"cannot read list ({_os_reason(err)})")
        return
    entries = 0
    with fp:
        for lineno in itertools.count(1):
            try:
                raw = fp.readline()
            except OSError as err:
                yield _failed(f"{name}:{lineno}", f"cannot read list ({_os_reason(err)})")
                return
            if not raw:
                break
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                yield _failed(f"{name}:{lineno}", "list is not UTF-8 text")
                return
            if not line or line.startswith("#"):
                continue
            entries += 1
            yield from _dispatch(_resolve(name, line), ctx, parents)
    if not entries:
        yield _failed(name, "list is empty")


# --- manifests -----------------------------------------------------------------------


def _pick_columns(names: list[str], ctx: _Context) -> tuple[int, int | None] | str:
    """(path column index, caption column index or None), or why no path column fits."""
    folded = [n.strip().lower() for n in names]

    def find(wanted: str) -> int | None:  # the exact name first, then case-insensitively
        if wanted in names:
            return names.index(wanted)
        return folded.index(wanted.strip().lower()) if wanted.strip().lower() in folded else None

    if ctx.column is not None:
        index = find(ctx.column)
        if index is None:
            return f"no column {ctx.column!r} ({_listed(names)})"
    else:
        found = next((c for c in PATH_COLUMNS if c in folded), None)
        if found is None:
            return f"no path or URL column ({_listed(names)}); pick one with --column"
        index = folded.index(found)
    if ctx.caption_column is None:
        return index, next((folded.index(c) for c in CAPTION_COLUMNS if c in folded and folded.index(c) != index), None)
    caption = find(ctx.caption_column)
    if caption is None:
        return f"no caption column {ctx.caption_column!r} ({_listed(names)})"
    return index, caption


def _listed(names: list[str]) -> str:
    if not names:
        return "it has no columns"
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED_COLUMNS])
    more = len(names) - _MAX_LISTED_COLUMNS
    return f"columns: {shown}" + (f" and {more} more" if more > 0 else "")


def _manifest_item(manifest: str, where: str, value: object, caption: object, ctx: _Context,
                   column: str) -> InputItem:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return _failed(where, f"column {column!r} is not UTF-8 text")
    if value is None or (isinstance(value, str) and not value.strip()):
        return _failed(where, f"empty {column!r} cell")
    if not isinstance(value, str):
        return _failed(where, f"column {column!r} holds {type(value).__name__}, not a path or URL")
    text = _caption_text(caption)
    entry = value.strip()
    if _SCHEME.match(entry):
        return replace(_url_item(entry, ctx, text), origin=where)
    name = _resolve(manifest, entry)
    path = Path(os.path.expanduser(name))
    return InputItem(name, read=partial(read_file, path, name), path=path, caption=text, origin=where)


def _caption_text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return (value.strip() or None) if isinstance(value, str) else None


def _iter_csv(name: str, path: str, ctx: _Context, delimiter: str) -> Iterator[InputItem]:
    try:
        fp = open(path, encoding="utf-8-sig", newline="")
    except OSError as err:
        yield _failed(name, f"cannot read manifest ({_os_reason(err)})")
        return
    with fp:
        reader = csv.reader(fp, delimiter=delimiter)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError, OSError) as err:
            yield _failed(name, f"cannot read manifest ({_csv_reason(err)})")
            return
        if header is None:
            yield _failed(name, "manifest is empty (no header row)")
            return
        picked = _pick_columns(header, ctx)
        if isinstance(picked, str):
            yield _failed(name, picked)
            return
        index, caption_index = picked
        column = header[index].strip()
        rows = 0
        while True:
            try:
                row = next(reader, None)
            except (csv.Error, UnicodeDecodeError, OSError) as err:
                yield _failed(f"{name}:{reader.line_num + 1}", f"cannot read manifest ({_csv_reason(err)})")
                return
            if row is None:
                break
            if not row:  # a blank line
                continue
            rows += 1
            value = row[index] if index < len(row) else None
            caption = row[caption_index] if caption_index is not None and caption_index < len(row) else None
            yield _manifest_item(name, f"{name}:{reader.line_num}", value, caption, ctx, column)
    if not rows:
        yield _failed(name, "manifest has no rows")


def _csv_reason(err: BaseException) -> str:
    if isinstance(err, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(err, OSError):
        return _os_reason(err)
    return one_line(err, 120)


def _iter_parquet(name: str, path: str, ctx: _Context) -> Iterator[InputItem]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise Image2PromptError("reading Parquet manifests needs pyarrow: pip install pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
        names = list(pf.schema_arrow.names)
    except Exception as err:  # noqa: BLE001  pyarrow raises ArrowInvalid, OSError, ...
        yield _failed(name, f"cannot read Parquet file ({one_line(err, 120)})")
        return
    with pf:
        picked = _pick_columns(names, ctx)
        if isinstance(picked, str):
            yield _failed(name, picked)
            return
        index, caption_index = picked
        column = names[index]
        wanted = [column] + ([names[caption_index]] if caption_index is not None else [])
        batches = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted)
        row = 0
        while True:
            try:
                batch = next(batches, None)
                if batch is None:
                    break
                values = batch.column(0).to_pylist()
                captions = batch.column(1).to_pylist() if caption_index is not None else [None] * len(values)
            except Exception as err:  # noqa: BLE001
                yield _failed(name, f"cannot read Parquet file after {row} rows ({one_line(err, 120)})")
                return
            for value, caption in zip(values, captions, strict=True):
                row += 1
                yield _manifest_item(name, f"{name}:{row}", value, caption, ctx, column)
        if not row:
            yield _failed(name, "manifest has no rows")


# --- WebDataset shards -------------------------------------------------------------


class _StrictInfo(tarfile.TarInfo):
    """Reads headers as tarfile does, except that an archive cut short is damage: tarfile ends a stream
    quietly at a missing, short or garbled header past the first; a shard is only whole when it ends
    with its end-of-archive block."""

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        try:
            return super().fromtarfile(archive)
        # CPython's header errors: real, but not in typeshed's tarfile stubs
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError,  # type: ignore[attr-defined]
                tarfile.InvalidHeaderError) as err:  # type: ignore[attr-defined]
            if archive.offset == 0:
                raise
            if isinstance(err, tarfile.EmptyHeaderError):  # type: ignore[attr-defined]
                raise tarfile.ReadError("truncated: no end-of-archive marker") from None
            if isinstance(err, tarfile.TruncatedHeaderError):  # type: ignore[attr-defined]
                raise tarfile.ReadError("truncated inside a header") from None
            raise tarfile.ReadError(f"bad header ({err})") from None


def _split_key(member: str) -> tuple[str, str]:
    """WebDataset's sample key and extension: ``dir/KEY.seg.png`` -> (``dir/KEY``, ``seg.png``)."""
    folder, _, base = member.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _iter_shard(name: str, path: str, ctx: _Context) -> Iterator[InputItem]:
    """The images of a tar shard, streamed: each sample's members are read as it is reached."""
    try:
        fp = open_file(Path(path), name)
    except ImageLoadError as err:
        yield InputItem(name, error=err)
        return
    with fp:
        try:
            tf = tarfile.open(fileobj=fp, mode="r|*", tarinfo=_StrictInfo)
        except _DAMAGE as err:
            yield _failed(name, "empty file" if str(err) == "empty file" else f"not a tar file ({_tar_reason(err)})")
            return
        with tf:
            yield from _shard_items(name, tf, (ctx.caption_column or "txt").strip().lower().lstrip("."))


def _shard_items(name: str, tf: tarfile.TarFile, caption_ext: str = "txt") -> Iterator[InputItem]:
    key: str | None = None
    images: list[InputItem] = []  # the current sample's images, waiting for its caption
    caption: str | None = None
    produced = 0
    others: Counter[str] = Counter()
    while True:
        ready: list[InputItem] = []
        try:
            member = tf.next()
            if member is None:
                break
            # A stream never goes back: drop the headers tarfile keeps, so a big shard stays small.
            del tf.members[:]  # type: ignore[attr-defined]  # TarFile.members: real, not in typeshed
            base = member.name.rpartition("/")[2]
            if not member.isfile() or base.startswith("."):
                continue
            member_key, ext = _split_key(member.name)
            if member_key != key:
                ready, images, caption, key = _sample(images, caption), [], None, member_key
            source = f"{name}/{member.name}"
            if is_image_filename(base):
                images.append(_member_item(tf, member, source))
            elif ext == caption_ext:
                caption = _member_text(tf, member)
            else:
                others[os.path.splitext(base)[1].lower() or "no extension"] += 1
        except _DAMAGE as err:
            # What was read in full stands; the member being read when it broke is lost.
            done = ready + _sample(images, caption)
            yield from done
            count = produced + len(done)
            yield _failed(name, f"damaged shard after {count} image{'s' if count != 1 else ''} "
                                f"({_tar_reason(err)})")
            return
        produced += len(ready)
        yield from ready
    last = _sample(images, caption)
    produced += len(last)
    yield from last
    if not produced:
        total = sum(others.values())
        found = f"found {total} file{'s' if total != 1 else ''}: {', '.join(sorted(others))}" if total else "no files"
        yield _failed(name, f"shard contains no images ({found})")


def _sample(images: list[InputItem], caption: str | None) -> list[InputItem]:
    return images if caption is None else [replace(i, caption=caption) if i.read else i for i in images]


def _member_item(tf: tarfile.TarFile, member: tarfile.TarInfo, source: str) -> InputItem:
    try:
        data = _member_image(tf, member, source)
    except ImageLoadError as err:
        return InputItem(source, error=err)
    return InputItem(source, read=lambda: data)


def _member_image(tf: tarfile.TarFile, member: tarfile.TarInfo, source: str) -> bytes:
    """A shard member's image bytes, or :class:`ImageLoadError` (too big, empty); damage raises as tarfile does."""
    if member.size > MAX_FILE_BYTES:
        raise ImageLoadError(source, _too_big())
    if member.size == 0:
        raise ImageLoadError(source, "empty file")
    return _member_bytes(tf, member, MAX_FILE_BYTES)


def _member_text(tf: tarfile.TarFile, member: tarfile.TarInfo) -> str | None:
    if member.size > _MAX_CAPTION_BYTES:
        return None
    return _member_bytes(tf, member, _MAX_CAPTION_BYTES).decode("utf-8", errors="replace").strip() or None


def _member_bytes(tf: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    handle: IO[bytes] | None = tf.extractfile(member)
    if handle is None:  # pragma: no cover - only regular files reach here
        return b""
    with handle:
        data = handle.read(limit + 1)
    if len(data) != member.size:
        raise tarfile.ReadError("unexpected end of data")
    return data


def _tar_reason(err: BaseException) -> str:
    cause = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    text = one_line(err, 120) or type(err).__name__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f": {one_line(cause, 80)}"
    return text


def _shard_member_item(name: str, path: str) -> InputItem | None:
    """``shard.tar/KEY.jpg`` (a shard member's source name, as a failure list holds it), or None."""
    parts = PurePosixPath(Path(path).as_posix())
    for parent in parts.parents:
        if parent.name and _container_kind(parent.name) == "tar" and os.path.isfile(parent):
            member = parts.relative_to(parent).as_posix()
            shard_name = name[: len(name) - len(member) - 1] if name.endswith(member) else str(parent)
            return InputItem(name, read=partial(_read_member, str(parent), shard_name, member, name))
    return None


def _read_member(shard: str, shard_name: str, member: str, source: str) -> bytes:
    with open_file(Path(shard), shard_name) as fp:
        try:
            with tarfile.open(fileobj=fp, mode="r|*", tarinfo=_StrictInfo) as tf:
                while (info := tf.next()) is not None:
                    del tf.members[:]  # type: ignore[attr-defined]  # TarFile.members: real, not in typeshed
                    if info.name == member and info.isfile():
                        return _member_image(tf, info, source)
        except _DAMAGE as err:
            raise ImageLoadError(source, f"damaged shard ({_tar_reason(err)})") from None
    raise ImageLoadError(source, f"no member {member} in {shard_name}")


_MANIFEST_ROW = re.compile(r"^(?P<manifest>.+\.(?:csv|tsv|parquet)):(?P<row>[1-9][0-9]*)$", re.IGNORECASE)


def _manifest_row_item(name: str, path: str, ctx: _Context) -> InputItem | None:
    """``manifest.csv:17`` (a manifest row's source name, as a failure list holds it): that row read
    again (CSV: the row ending on line 17; Parquet: row 17), or None when ``name`` is not one."""
    match = _MANIFEST_ROW.match(path)
    if match is None or not os.path.isfile(match["manifest"]):
        return None
    manifest = match["manifest"]
    shown = name[: len(name) - len(match["row"]) - 1]
    wanted = f"{shown}:{match['row']}"
    with closing(_container(shown, manifest, ctx, ())) as rows:
        for item in rows:
            if item.source == wanted or item.origin == wanted:
                return item
            if item.source == shown and item.error is not None:  # the manifest itself fails now
                return InputItem(wanted, error=ImageLoadError(wanted, item.error.reason))
    return _failed(wanted, f"no such row in {shown}")


def _os_reason(err: OSError) -> str:
    return "permission denied" if isinstance(err, PermissionError) else (err.strerror or str(err)).lower()
