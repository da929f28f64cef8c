"""Exceptions raised by image2prompt.

Every error carries a message meant for a person: it names the bad input and,
where there is one, what to do instead. Front ends print ``str(err)`` on one
line; the library never prints.
"""

from __future__ import annotations


class Image2PromptError(Exception):
    """Base class for all errors raised on purpose by image2prompt."""


class ImageLoadError(Image2PromptError):
    """An input could not be read as an image (missing, unreadable, corrupt, not an image)."""

    #: What went wrong, for front ends that map errors to codes (HTTP 413, 415...):
    #: ``too_large``, ``format`` (decodable, but not an allowed format), ``refused`` (a URL
    #: the caller may not fetch) or ``invalid`` (everything else).
    KINDS = ("invalid", "too_large", "format", "refused")

    def __init__(self, source: str, reason: str, kind: str = "invalid") -> None:
        self.source = source
        self.reason = reason
        self.kind = kind if kind in self.KINDS else "invalid"
        super().__init__(f"{source}: {reason}")


#: How a pixel-limit refusal says what to do, in words neutral to every front end (the library's
#: argument is ``max_pixels``, the command line's option ``--max-pixels``): a front end may put its
#: own setting's name in their place.
RAISE_MAX_PIXELS = "raise the max-pixels limit"


class ModelLoadError(Image2PromptError):
    """A model name is unknown, or its weights could not be loaded."""


class VocabularyError(Image2PromptError):
    """A vocabulary pack or list could not be found or read."""


class CacheError(Image2PromptError):
    """The embedding cache location cannot be used."""


class SettingsError(Image2PromptError, ValueError):
    """Search settings that cannot run (a count below its minimum, an unknown mode)."""


class CaptionRequired(SettingsError):
    """A mode needs a caption and none can be had: none was given and no caption model is loaded.

    The one message every front end shows for it. ``caption_free`` names the modes that run
    without a caption (:func:`image2prompt.modes.caption_free_modes`), ``source`` the input
    that lacks one (when only some inputs do, as with per-image captions from a manifest).
    """

    def __init__(self, mode: str, *, source: str | None = None, caption_free: tuple[str, ...] | list[str] = ()) -> None:
        self.mode = mode
        self.source = source
        self.caption_free = tuple(caption_free)
        where = f"{source}: " if source else ""
        others = f" (or use {' or '.join(self.caption_free)} mode)" if self.caption_free else ""
        super().__init__(f"{where}{mode} mode needs a caption, and none was given or generated: "
                         f"give a caption or load a caption model{others}")


def one_line(text: object, limit: int = 300) -> str:
    """``text`` on one line, whitespace collapsed, cut at a word boundary to ``limit`` characters.

    The one truncator for every message that quotes another library's error.
    """
    flat = " ".join(str(text).split())
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 3]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.") + "..."
