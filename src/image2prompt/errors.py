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

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class ModelLoadError(Image2PromptError):
    """A model name is unknown, or its weights could not be loaded."""


class VocabularyError(Image2PromptError):
    """A vocabulary pack or list could not be found or read."""


class CacheError(Image2PromptError):
    """The embedding cache location cannot be used."""


class MissingDependencyError(Image2PromptError):
    """An optional dependency is needed for the requested feature."""

    def __init__(self, package: str, feature: str, extra: str | None = None) -> None:
        hint = f"pip install 'image2prompt[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{feature} needs the '{package}' package: {hint}")
