"""Caption files beside the images, for trainers (kohya reads ``.caption``, WD14 scripts ``.txt``).

``photo.png`` gets ``photo.txt`` (or ``photo<EXT>``): the prompt on one line, UTF-8,
with optional trigger words before and after it, joined with ", ". The trigger words count
against the prompt's token budget (the prompt is shortened to make room, see
:func:`fit_prompt`), and the prefix is always first, the suffix always last. A caption file that
exists already is skipped, overwritten, or has our prompt appended or prepended to its
caption (the A1111 tagger's ignore / copy / append / prepend), the prefix moved in front of
both; ``dedupe`` drops our parts that the existing caption already has (", "-separated
parts, compared case-insensitively). Appending is idempotent: a caption that already
holds ours (a rerun) is left as it is. The existing caption is kept whole, so with append
or prepend the file can be longer than the budget (its prefix is never what a trainer cuts).

Every file is written atomically (a temporary file in the same folder, then
``os.replace``): a crash never leaves half a caption.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import SettingsError

__all__ = ["ON_EXISTING", "SidecarOptions", "caption_text", "fit_prompt", "sidecar_path", "write_sidecar"]

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


def _join(*texts: str) -> str:
    return SEPARATOR.join(t for t in texts if t)


def fit_prompt(prompt: str, options: SidecarOptions, fits: Callable[[str], bool] | None) -> str:
    """``prompt`` (one line), shortened until our caption (prefix, prompt, suffix) ``fits``: whole
    ", "-separated parts are dropped from its end (a search adds its weakest phrases last), then,
    if its first part alone is too long, words from that part's end. Unchanged without ``fits``."""
    text = _one_line(prompt)
    if fits is None:
        return text
    prefix, suffix = _one_line(options.prefix or ""), _one_line(options.suffix or "")
    if fits(_join(prefix, text, suffix)):
        return text
    parts = text.split(SEPARATOR)
    while len(parts) > 1 and not fits(_join(prefix, SEPARATOR.join(parts), suffix)):
        parts.pop()
    words = parts[0].split(" ")
    while len(parts) == 1 and len(words) > 1 and not fits(_join(prefix, " ".join(words), suffix)):
        words.pop()
    return SEPARATOR.join(parts) if len(parts) > 1 else " ".join(words)


def caption_text(prompt: str, options: SidecarOptions, fits: Callable[[str], bool] | None = None) -> str:
    """Our caption: prefix, prompt and suffix on one line, joined with ", " (the prompt
    shortened by :func:`fit_prompt` until the whole line ``fits``, when that is given)."""
    return _join(_one_line(options.prefix or ""), fit_prompt(prompt, options, fits), _one_line(options.suffix or ""))


def _strip_ends(text: str, prefix: str, suffix: str) -> str:
    """``text`` without our prefix at its start and our suffix at its end (what a rerun finds)."""
    if prefix and (text == prefix or text.startswith(prefix + SEPARATOR)):
        text = text[len(prefix):].removeprefix(SEPARATOR)
    if suffix and (text == suffix or text.endswith(SEPARATOR + suffix)):
        text = text[: len(text) - len(suffix)].removesuffix(SEPARATOR)
    return text


def write_sidecar(image: str | os.PathLike[str], prompt: str, options: SidecarOptions,
                  fits: Callable[[str], bool] | None = None) -> str:
    """Write the caption file of ``image``; returns what happened: ``written``, ``skipped``,
    ``overwritten``, ``appended``, ``prepended`` or ``unchanged`` (it already had our caption).

    ``fits`` (a line -> whether it is within the token budget) shortens the prompt until
    prefix, prompt and suffix fit together (:func:`fit_prompt`): the trigger words count
    against the budget. The prefix always comes first and the suffix last: append and
    prepend put the prompt after or before the existing caption, between them (kohya's
    ``keep_tokens`` keeps the first tokens in place, so the trigger words must lead).
    """
    path = sidecar_path(image, options.ext)
    prefix, suffix = _one_line(options.prefix or ""), _one_line(options.suffix or "")
    prompt = fit_prompt(prompt, options, fits)
    ours = _join(prefix, prompt, suffix)
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
    core = _strip_ends(existing, prefix, suffix)  # the existing caption between our prefix and suffix
    add = prompt
    if options.dedupe:
        have = {p.lower() for p in _parts(existing)}
        add = SEPARATOR.join(p for p in _parts(prompt) if p.lower() not in have)
    if options.on_existing == "append":
        if add and not (core == add or core.endswith(SEPARATOR + add)):
            core = _join(core, add)
        outcome = "appended"
    else:
        if add and not (core == add or core.startswith(add + SEPARATOR)):
            core = _join(add, core)
        outcome = "prepended"
    text = _join(prefix, core, suffix)
    if text == existing:
        return "unchanged"
    _atomic_write(path, text)
    return outcome


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
