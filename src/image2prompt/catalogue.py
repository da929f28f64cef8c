"""What can be named, and the defaults, without loading anything (no torch here).

Listing verbs in open_clip's manner (``open_clip.list_models()``, ``list_pretrained()``),
returning plain data that any front end can show: the command line's ``image2prompt
models``, the server, the ComfyUI nodes::

    >>> from image2prompt import catalogue
    >>> catalogue.list_modes()                      # every search mode, plugins' included
    ['best', 'classic', 'fast', 'negative', 'turbo', 'style']
    >>> [t.name for t in catalogue.list_targets()]   # the Stable Diffusion families
    ['sd15', 'sd2', 'sdxl']
    >>> catalogue.list_captioners()[0].repo
    'Salesforce/blip-image-captioning-base'

The tables themselves live in :mod:`image2prompt.models._registry` and the search defaults
in :class:`image2prompt.settings.SearchSettings`; this module only reads them, so each
default is defined once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .models._registry import (
    CAPTION_MODELS,
    CLIP_PRESETS,
    DEFAULT_CAPTIONER,
    DEFAULT_CLIP,
    LOCAL_DIR,
    LOW_VRAM_CAPTIONER,
    TARGET_ALIASES,
    TARGETS,
    captioner_plugin_names,
    open_clip_names,
)
from .modes import caption_free_modes, list_modes
from .settings import SearchSettings

#: The target whose CLIP backbone is the default one (``sd15``).
DEFAULT_TARGET = next(name for name, clip in TARGETS.items() if clip == DEFAULT_CLIP)
#: The search mode used when none is named.
DEFAULT_MODE: str = SearchSettings().mode

__all__ = ["DEFAULT_CAPTIONER", "DEFAULT_CLIP", "DEFAULT_MODE", "DEFAULT_TARGET", "LOCAL_DIR", "LOW_VRAM_CAPTIONER",
           "CaptionerInfo", "TargetInfo", "caption_free_modes", "defaults", "list_captioners", "list_clip_models",
           "list_clip_presets", "list_modes", "list_targets"]


@dataclass(frozen=True)
class TargetInfo:
    """A Stable Diffusion family (``--target``) and the CLIP backbone its text encoder uses."""

    name: str
    clip: str
    aliases: tuple[str, ...] = ()
    default: bool = False  # the family written for when none is named

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CaptionerInfo:
    """A caption model that can be named by a short name."""

    name: str
    repo: str | None  # its Hugging Face repository; None for a plugin's name
    default: bool = False  # what caption_model="auto" picks
    low_vram_default: bool = False  # what "auto" picks with low_vram
    plugin: bool = False  # registered by a plugin (a name ending in ":" is a scheme: every name with that prefix)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_targets() -> list[TargetInfo]:
    """The Stable Diffusion families a prompt can be written for (SD1, SD2, SDXL), in order."""
    return [TargetInfo(name, clip, tuple(a for a, t in TARGET_ALIASES.items() if t == name), name == DEFAULT_TARGET)
            for name, clip in TARGETS.items()]


def list_captioners(*, plugins: bool = True) -> list[CaptionerInfo]:
    """The captioners known by a short name: the built-in table, then (``plugins``) the names
    plugins register (their entry points are loaded first). ``none`` is not among them."""
    out = [CaptionerInfo(name, repo, default=name == DEFAULT_CAPTIONER, low_vram_default=name == LOW_VRAM_CAPTIONER)
           for name, repo in CAPTION_MODELS.items()]
    if plugins:
        out += [CaptionerInfo(name, None, plugin=True) for name in captioner_plugin_names()]
    return out


def list_clip_models() -> list[str]:
    """The CLIP models open_clip knows, as ``ARCH/TAG`` names (``ViT-L-14/openai``), in
    open_clip's order; empty when open_clip_torch is not installed. Reads open_clip's table
    without importing torch. Other names (``local-dir:``, ``hf-hub:``, ``hf:``) work too."""
    return open_clip_names() or []


def list_clip_presets() -> dict[str, tuple[str, ...]]:
    """Named sets of CLIP models scored together (their mean similarity), e.g. ``sdxl-dual``."""
    return dict(CLIP_PRESETS)


def defaults() -> dict[str, Any]:
    """The defaults in one mapping: the target, its CLIP model, the captioners ``auto`` picks, the mode."""
    return {"target": DEFAULT_TARGET, "clip": DEFAULT_CLIP, "captioner": DEFAULT_CAPTIONER,
            "low_vram_captioner": LOW_VRAM_CAPTIONER, "mode": DEFAULT_MODE}
