"""Caption files beside the images, for trainers (kohya reads ``.caption``, WD14 scripts ``.txt``).

``photo.png`` gets ``photo.txt`` (or ``photo<EXT>``): the prompt on one line, UTF-8,
with optional trigger words before and after it, joined with ", ". A caption file that
exists already is skipped, overwritten, or has ours appended or prepended (the A1111
tagger's ignore / copy / append / prepend); ``dedupe`` drops our parts that the existing
caption already has (", "-separated parts, compared case-insensitively). Appending is
idempotent: a caption that already ends with ours (a rerun) is left as it is.

Every file is written atomically (a temporary file in the same folder, then
``os.replace``): a crash never leaves half a caption.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import SettingsError

__all__ = ["ON_EXISTING", "SidecarOptions", "caption_text", "sidecar_path", "write_sidecar"]

#: What to do with a caption file that exists already.
ON_EXISTING = ("skip", "overwrite", "append", "prepend")
SEPARATOR = ", "


@dataclass(frozen=True)
class SidecarOptions:
    ext: str = ".txt"  # the caption file's extension (".caption" for kohya)
    on_existing: str = "skip"
    prefix: str | None = None  # trigger words before the prompt
    suffix: str | None = None  # and after it
    dedupe: bool = False  # append/prepend: leave out our parts the existing caption has

    def __post_init__(self) -> None:
        ext = (self.ext or ".txt").strip()
        if not ext.startswith("."):
            ext = "." + ext
        if ext == "." or "/" in ext or "\\" in ext or os.sep in ext:
            raise SettingsError(f"sidecar extension must be like .txt or .caption, got {self.ext!r}")
        object.__setattr__(self, "ext", ext)
        if self.on_existing not in ON_EXISTING:
            raise SettingsError(f"on_existing must be one of: {', '.join(ON_EXISTING)}; got {self.on_existing!r}")


def sidecar_path(image: str | os.PathLike[str], ext: str = ".txt") -> Path:
    """``photo.png`` -> ``photo.txt``: the image's name with its extension replaced."""
    p = Path(image)
    return p.with_name(p.stem + ext) if p.suffix else p.with_name(p.name + ext)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _parts(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def caption_text(prompt: str, options: SidecarOptions) -> str:
    """Our caption: prefix, prompt and suffix on one line, joined with ", "."""
    return SEPARATOR.join(t for t in (_one_line(options.prefix or ""), _one_line(prompt),
                                      _one_line(options.suffix or "")) if t)


def write_sidecar(image: str | os.PathLike[str], prompt: str, options: SidecarOptions) -> str:
    """Write the caption file of ``image``; returns what happened: ``written``, ``skipped``,
    ``overwritten``, ``appended``, ``prepended`` or ``unchanged`` (it already had our caption)."""
    path = sidecar_path(image, options.ext)
    ours = caption_text(prompt, options)
    try:
        existing_raw = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        _atomic_write(path, ours)
        return "written"
    if options.on_existing == "skip":
        return "skipped"
    if options.on_existing == "overwrite":
        if existing_raw == ours + "\n":
            return "unchanged"
        _atomic_write(path, ours)
        return "overwritten"
    existing = SEPARATOR.join(_one_line(line) for line in existing_raw.splitlines() if line.strip())
    if not existing:
        _atomic_write(path, ours)
        return "written"
    add = ours
    if options.dedupe:
        have = {p.lower() for p in _parts(existing)}
        add = SEPARATOR.join(p for p in _parts(ours) if p.lower() not in have)
    if not add:
        return "unchanged"
    if options.on_existing == "append":
        if existing == add or existing.endswith(SEPARATOR + add):
            return "unchanged"
        _atomic_write(path, existing + SEPARATOR + add)
        return "appended"
    if existing == add or existing.startswith(add + SEPARATOR):
        return "unchanged"
    _atomic_write(path, add + SEPARATOR + existing)
    return "prepended"


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
