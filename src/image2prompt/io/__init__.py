"""Input layer: find image sources and load them as RGB PIL images.

Depends only on the standard library, PIL and numpy (no torch), so front ends can
validate inputs before any model is loaded.
"""

from __future__ import annotations

from image2prompt.io.images import iter_images, load_image
from image2prompt.io.sources import IMAGE_EXTENSIONS, ImageSource, expand_sources

__all__ = ["IMAGE_EXTENSIONS", "ImageSource", "expand_sources", "iter_images", "load_image"]
