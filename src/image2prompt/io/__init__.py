"""Input layer: find image sources (paths, URLs, bytes, PIL images, arrays) and load them as RGB PIL images.

Depends only on the standard library, PIL and numpy (no torch), so front ends can
validate inputs before any model is loaded.
"""

from __future__ import annotations

from image2prompt.io.download import download_bytes
from image2prompt.io.images import DEFAULT_MAX_PIXELS, load_image
from image2prompt.io.sources import (
    ImageInput,
    ImageSource,
    coerce_source,
    expand_sources,
    image_extensions,
    is_array,
)

__all__ = [
    "DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "ImageInput", "ImageSource", "coerce_source", "download_bytes",
    "expand_sources", "image_extensions", "is_array", "load_image",
]


def __getattr__(name: str) -> frozenset[str]:
    # IMAGE_EXTENSIONS (every extension Pillow decodes) is computed on first use.
    if name == "IMAGE_EXTENSIONS":
        return image_extensions()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
