"""Captioners (BLIP, BLIP-2, GIT) via transformers, batched and greedy; plugins add others."""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..errors import ModelLoadError
from ._registry import CaptionerLike, CaptionSpec, captioner_plugin, parse_caption_name
from .device import DeviceLike, dtype_name, resolve_device, resolve_dtype
from .loading import CAPTION_ADVICE, call_plugin, load_transformers

log = logging.getLogger(__name__)


class Captioner:
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

    def __repr__(self) -> str:
        return f"Captioner({self.name!r}, device={self.device}, dtype={dtype_name(self.dtype)})"

    def caption(self, images: Sequence[Any], *, batch_size: int = 16) -> list[str]:
        out: list[str] = []
        for start in range(0, len(images), batch_size):
            out.extend(self._caption_batch(list(images[start : start + batch_size])))
        return out

    def _caption_batch(self, images: list[Any]) -> list[str]:
        inputs = self.processor(images=images, return_tensors="pt")
        with self._lock, torch.inference_mode():
            inputs = inputs.to(self.device)
            if "pixel_values" in inputs and self.spec.kind != "git":
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            tokens = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1
            )
        return list(self.processor.batch_decode(tokens, skip_special_tokens=True))

    def offload(self) -> None:
        if self._home.type != "cpu":
            with self._lock:
                self.model.to("cpu")
                self.device = torch.device("cpu")

    def activate(self) -> None:
        if self.device != self._home:
            with self._lock:
                self.model.to(self._home)
                self.device = self._home


def load_captioner(name: str, *, device: DeviceLike = "auto", precision: str = "auto",
                   max_new_tokens: int = 32, **options: Any) -> CaptionerLike:
    """Load a captioner by name; failures raise ModelLoadError (never random weights).

    Plugin captioners are asked first; ``options`` are passed on to a plugin's loader
    (the built-in captioners take none).
    """
    plugin = captioner_plugin(name)
    if plugin is not None:
        return _load_plugin(plugin, name.strip(), device, precision, max_new_tokens, options)
    if options:
        raise TypeError(f"unexpected options for the built-in captioners: {', '.join(options)}")
    spec = parse_caption_name(name)
    dev = resolve_device(device)
    # GIT is numerically fragile in fp16 (the reference keeps it in fp32 too).
    dtype = torch.float32 if spec.kind == "git" and precision == "auto" else resolve_dtype(dev, precision)
    log.info("loading captioner %s (%s) on %s as %s", spec.name, spec.kind, dev, dtype_name(dtype))
    from transformers import AutoModelForCausalLM, AutoProcessor, Blip2ForConditionalGeneration, BlipForConditionalGeneration

    cls = {"blip": BlipForConditionalGeneration, "blip2": Blip2ForConditionalGeneration,
           "git": AutoModelForCausalLM}[spec.kind]
    model, processor = load_transformers(cls, AutoProcessor, spec.source, dtype, dev,
                                         what=f"caption model {spec.name!r}", remote=spec.local_path is None,
                                         advice=CAPTION_ADVICE)
    if spec.kind == "blip":
        fuse_blip_vision_attention(model)
    return Captioner(spec, model, processor, dev, dtype, max_new_tokens)


def _sdpa_forward(self: Any, hidden_states: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """BlipAttention.forward with torch's fused kernel in place of matmul, scale, softmax, matmul."""
    if kwargs.get("output_attentions"):  # transformers < 5 pass the flag: give them the weights
        return super(type(self), self).forward(hidden_states, **kwargs)
    bsz, length, dim = hidden_states.size()
    q, k, v = (self.qkv(hidden_states).reshape(bsz, length, 3, self.num_heads, self.head_dim)
               .permute(2, 0, 3, 1, 4).unbind(0))
    p = self.dropout.p if self.training else 0.0
    ctx = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
    return self.projection(ctx.transpose(1, 2).reshape(bsz, length, dim)), None


@functools.lru_cache(maxsize=None)
def _fused_blip_attention() -> type | None:
    try:
        from transformers.models.blip.modeling_blip import BlipAttention
    except ImportError:  # pragma: no cover - a transformers without BLIP
        return None
    # A module-level name (through __getattr__ below), so a fused model pickles like any other.
    return type("FusedBlipAttention", (BlipAttention,), {"forward": _sdpa_forward, "__module__": __name__})


def __getattr__(name: str) -> Any:
    if name == "FusedBlipAttention" and _fused_blip_attention() is not None:
        return _fused_blip_attention()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fuse_blip_vision_attention(model: Any) -> int:
    """Run a BLIP vision tower's attention through ``scaled_dot_product_attention``.

    transformers' BLIP (unlike BLIP-2 and GIT) hard-codes eager attention: at 384 px the
    tower's 577 tokens make it materialise, scale and softmax a 577x577 matrix per head. The
    fused kernel computes the same attention (equal to float rounding; the tests hold it to
    the eager output) without those passes: a fifth less time for the tower on a CPU (1.13
    -> 0.90 s per image at blip-base size, docs/benchmarks.md). Modules that are exactly
    transformers' ``BlipAttention`` with the attributes the fused forward reads become
    ``FusedBlipAttention``, a subclass, on this model only. It returns no attention weights:
    BLIP's encoder layer discards them, and a caller that asks for them
    (``output_attentions=True``) gets none on transformers 5 and the eager path before it.
    Returns how many modules were changed.
    """
    fused = _fused_blip_attention()
    if fused is None:  # pragma: no cover
        return 0
    base = fused.__mro__[1]
    n = 0
    for module in model.modules():
        if type(module) is base and all(
                hasattr(module, a) for a in ("qkv", "projection", "num_heads", "head_dim", "scale", "dropout")):
            module.__class__ = fused
            n += 1
    log.debug("BLIP vision attention: %d modules on the fused kernel", n)
    return n


def _load_plugin(loader: Any, name: str, device: DeviceLike, precision: str, max_new_tokens: int,
                 options: dict[str, Any]) -> CaptionerLike:
    dev = "auto" if device is None else str(device)
    cap = call_plugin(loader, name, "caption model", device=dev, precision=precision,
                      max_new_tokens=max_new_tokens, **options)
    if not isinstance(getattr(cap, "name", None), str) or not callable(getattr(cap, "caption", None)):
        raise ModelLoadError(
            f"caption model {name!r}: the plugin returned {type(cap).__name__}, which lacks "
            "name: str and caption(images, *, batch_size)"
        )
    return cap
