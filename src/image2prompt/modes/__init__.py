"""Search modes: one module each, behind one small interface (:class:`Mode`) and a registry.

The orchestrator only dispatches: ``get_mode(settings.mode).plan(ctx, features)``.
A new mode is a class with ``name``, ``uses_caption``, ``needs_caption()`` and
``plan()`` (see :mod:`image2prompt.modes.base`), and ``uses_beam = True`` if its search
reads ``SearchSettings.beam``, registered with::

    from image2prompt.modes import register_mode

    @register_mode
    class MyMode: ...

Plugins register modes the same way from an ``image2prompt.plugins`` entry point.
"""

from __future__ import annotations

from typing import Any, TypeVar

from ..errors import CaptionRequired, SettingsError
from ..models._registry import load_plugins
from .base import Chain, Mode, Outcome, Scored, SearchContext, Task
from .best import BestMode
from .caption import CaptionMode
from .classic import ClassicMode
from .fast import FastMode
from .negative import NegativeMode
from .style import StyleMode
from .turbo import TurboMode

_MODES: dict[str, Mode] = {}

M = TypeVar("M")


def register_mode(cls: M) -> M:
    """Register a mode class (or instance) under its ``name``; a later one of the same name wins."""
    mode: Any = cls() if isinstance(cls, type) else cls
    _MODES[mode.name] = mode
    return cls


def get_mode(name: str) -> Mode:
    if name not in _MODES:
        load_plugins()
    try:
        return _MODES[name]
    except KeyError:
        raise SettingsError(f"unknown mode {name!r}; choose one of: {', '.join(mode_names())}") from None


def list_modes() -> list[str]:
    """Every registered mode's name: the built-in ones, then those of installed plugins (their
    ``image2prompt.plugins`` entry points are loaded first). What every front end offers."""
    load_plugins()
    return list(_MODES)


mode_names = list_modes  # the older name


def caption_free_modes() -> list[str]:
    """The registered modes that run without a caption (none given and no captioner loaded): what a front end suggests
    when a caption is missing."""
    return [name for name in list_modes() if not _MODES[name].needs_caption(False)]


def require_caption(mode: str, *, has_caption: bool, has_captioner: bool, source: str | None = None) -> None:
    """Raise :class:`~image2prompt.errors.CaptionRequired` when ``mode`` needs a caption and none can be had (no
    caption given, no caption model loaded): the one check, and the one message, of every front end."""
    if not has_caption and not has_captioner and get_mode(mode).needs_caption(False):
        raise CaptionRequired(mode, source=source, caption_free=caption_free_modes())


def beam_modes() -> list[str]:
    """The registered modes whose search reads ``SearchSettings.beam`` (``uses_beam = True``);
    the others ignore it."""
    return [name for name in list_modes() if getattr(_MODES[name], "uses_beam", False)]


for _cls in (BestMode, ClassicMode, FastMode, NegativeMode, TurboMode, StyleMode, CaptionMode):
    register_mode(_cls)

__all__ = ["Chain", "Mode", "Outcome", "Scored", "SearchContext", "Task", "beam_modes", "caption_free_modes",
           "get_mode", "list_modes", "mode_names", "register_mode", "require_caption"]
