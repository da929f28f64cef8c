"""The transformers captioner the built-in ones share: BLIP, BLIP-2 and GIT as it is, and the
vision-language models of :mod:`.vlm` as its subclass. Its own module, so that :mod:`.vlm` can
build on it while :mod:`.captioners` (the loader) imports :mod:`.vlm`, without a cycle."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch

from ._registry import CaptionSpec
from .device import LoadedModel
from .loading import processor_input_side

__all__ = ["Captioner"]


class Captioner(LoadedModel):
    """Generates one caption per image; safe to share across threads.

    This is the built-in implementation of the captioner protocol
    (:class:`~image2prompt.models._registry.CaptionerLike`): ``name`` and
    ``caption(images, *, batch_size) -> list[str]``, plus the optional
    ``offload()``/``activate()`` that callers use only when present. Captions are
    the raw decoded text (special tokens skipped, nothing else changed); cleaning
    them (``image2prompt.prompt.clean_caption``) is the caller's job.
    """

    def __init__(self, spec: CaptionSpec, model: Any, processor: Any, device: torch.device,
                 dtype: torch.dtype, max_new_tokens: int = 32) -> None:
        self.spec = spec
        self.name = spec.name
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self._home = device
        self._lock = threading.RLock()

    @property
    def input_side(self) -> int | None:
        """The largest side (pixels) the processor resizes or crops images to (None: not known)."""
        return processor_input_side(self.processor)

    def caption(self, images: Sequence[Any], *, batch_size: int = 16) -> list[str]:
        out: list[str] = []
        for start in range(0, len(images), batch_size):
            inputs = self.processor(images=list(images[start : start + batch_size]), return_tensors="pt")
            with self._lock, torch.inference_mode():
                inputs = inputs.to(self.device)
                if "pixel_values" in inputs and self.spec.kind != "git":
                    inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
                tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
            out.extend(self.processor.batch_decode(tokens, skip_special_tokens=True))
        return out
