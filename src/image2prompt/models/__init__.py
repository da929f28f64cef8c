"""Models: CLIP encoders and captioners.

Only this package imports torch, open_clip and transformers, and only when a
model is actually loaded: importing ``image2prompt.models`` stays light.
Other packages add models through plugins (see :mod:`image2prompt.models._registry`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._registry import (
    CAPTION_MODELS,
    CLIP_PRESETS,
    DEFAULT_CAPTIONER,
    DEFAULT_CLIP,
    PLUGIN_GROUP,
    TARGETS,
    CaptionerLike,
    CaptionSpec,
    ClipSpec,
    expand_clip_names,
    load_plugins,
    parse_caption_name,
    parse_clip_name,
    register_captioner,
    register_clip_backend,
    resolve_target,
)

if TYPE_CHECKING:  # pragma: no cover
    from .captioners import Captioner, load_captioner
    from .clip import ClipEncoder, load_clip

_LAZY = {
    "ClipEncoder": ".clip", "load_clip": ".clip",
    "Captioner": ".captioners", "load_captioner": ".captioners",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CAPTION_MODELS", "CLIP_PRESETS", "DEFAULT_CAPTIONER", "DEFAULT_CLIP", "PLUGIN_GROUP", "TARGETS", "CaptionSpec",
    "Captioner", "CaptionerLike", "ClipEncoder", "ClipSpec", "expand_clip_names", "load_captioner", "load_clip",
    "load_plugins", "parse_caption_name", "parse_clip_name", "register_captioner", "register_clip_backend",
    "resolve_target",
]
