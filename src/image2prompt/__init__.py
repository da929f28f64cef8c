"""image2prompt: turn an image into a scored, editable prompt scaffold for text-to-image models.

The output approximates, it does not recover: many prompts give the same image.
Every phrase keeps its CLIP score so a person can judge it.

Importing this package loads no model and imports no torch; models load in
:meth:`Interrogator.load`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import Image2PromptError, ImageLoadError, ModelLoadError, VocabularyError
from .features import Features
from .results import MODES, Analysis, Phrase, Result, Trace, TraceStep
from .settings import SearchSettings

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from .catalogue import list_captioners, list_clip_models, list_modes, list_targets
    from .interrogator import Config, Interrogator

_LAZY = {"Config": ".interrogator", "Interrogator": ".interrogator",
         # what can be named, in open_clip's manner (image2prompt.catalogue; no torch)
         "list_captioners": ".catalogue", "list_clip_models": ".catalogue", "list_modes": ".catalogue",
         "list_targets": ".catalogue"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MODES", "Analysis", "Config", "Features", "Image2PromptError", "ImageLoadError", "Interrogator",
    "ModelLoadError", "Phrase", "Result", "SearchSettings", "Trace", "TraceStep", "VocabularyError",
    "__version__", "list_captioners", "list_clip_models", "list_modes", "list_targets",
]
