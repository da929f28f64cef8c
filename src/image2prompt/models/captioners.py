"""Captioners (BLIP, BLIP-2, GIT, and vision-language models in .vlm) via transformers, batched and
greedy; plugins add others."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import math
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ModelLoadError
from ._registry import (
    HF_TRANSFORMERS,
    REMOTE,
    CaptionerLike,
    CaptionSpec,
    caption_kind,
    captioner_plugin,
    parse_caption_name,
)
from .captioner_base import Captioner
from .device import DeviceLike, dtype_name, resolve_device, resolve_dtype
from .loading import CAPTION_ADVICE, call_plugin, from_hub, load_transformers
from .retype import retype

log = logging.getLogger(__name__)


def load_captioner(name: str, *, device: DeviceLike = "auto", precision: str = "auto",
                   max_new_tokens: int = 32, **options: Any) -> CaptionerLike:
    """Load a captioner by name; failures raise ModelLoadError (never random weights).

    Plugin captioners are asked first; ``options`` are passed on to a plugin's loader
    (the built-in captioners take none).
    """
    plugin = captioner_plugin(name)
    if plugin is not None:
        return _load_plugin(plugin, name.strip(), device, precision, max_new_tokens, options)
    if name.strip().startswith(REMOTE):  # a caption server; ``options``: RemoteCaptioner's arguments
        from .remote import load_remote_captioner

        remote = parse_caption_name(name)
        return load_remote_captioner(remote.name, remote.source or None, max_new_tokens=max_new_tokens, **options)
    spec = parse_caption_name(name)
    if spec.local_path is None and spec.kind != "plugin":
        spec = _hub_spec(spec)
    instruction = options.pop("instruction", None)  # a VLM's: what it is asked
    if instruction is not None and spec.kind not in ("vlm", "florence2"):
        options["instruction"] = instruction
    if options:
        raise TypeError(f"unexpected options for {spec.kind} captioners: {', '.join(options)}")
    if spec.kind in ("vlm", "florence2"):
        from .vlm import load_vlm_captioner

        return load_vlm_captioner(spec, device=device, precision=precision, max_new_tokens=max_new_tokens,
                                  instruction=instruction)
    dev = resolve_device(device)
    # GIT is numerically fragile in fp16 (the reference keeps it in fp32 too).
    dtype = torch.float32 if spec.kind == "git" and precision == "auto" else resolve_dtype(dev, precision)
    log.info("loading captioner %s (%s) on %s as %s", spec.name, spec.kind, dev, dtype_name(dtype))
    from transformers import (
        AutoModelForCausalLM,
        AutoProcessor,
        Blip2ForConditionalGeneration,
        BlipForConditionalGeneration,
    )

    cls = {"blip": BlipForConditionalGeneration, "blip2": Blip2ForConditionalGeneration,
           "git": AutoModelForCausalLM}[spec.kind]
    model, processor = load_transformers(cls, AutoProcessor, spec.source, dtype, dev,
                                         what=f"caption model {spec.name!r}", remote=spec.local_path is None,
                                         advice=CAPTION_ADVICE)
    if spec.kind == "blip":
        fuse_blip_vision_attention(model)
        chunk_blip_vision(model)
        absorb_blip_cross_attention(model)
    return Captioner(spec, model, processor, dev, dtype, max_new_tokens)


def _hub_spec(spec: CaptionSpec) -> CaptionSpec:
    """An ``hf:`` repository's spec with its kind read from its ``config.json`` (fetched, or from
    the local Hub cache), not guessed from its name; unchanged when the config cannot be had
    (the model's own load then says why)."""
    if not spec.name.startswith(HF_TRANSFORMERS):
        return spec
    from huggingface_hub import hf_hub_download

    try:
        path = from_hub(lambda: hf_hub_download(spec.source, "config.json"), what=f"caption model {spec.name!r}",
                        remote=True, advice=CAPTION_ADVICE)
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (ModelLoadError, OSError, ValueError):
        return spec
    if not isinstance(config, dict):
        return spec
    kind = caption_kind(config, spec.name)
    return spec if kind == spec.kind else dataclasses.replace(spec, kind=kind)


def _sdpa_forward(self: Any, hidden_states: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """BlipAttention.forward with torch's fused kernel in place of matmul, scale, softmax, matmul."""
    if kwargs.get("output_attentions"):  # transformers < 5 pass the flag: give them the weights
        return super(_fused_blip_attention(), self).forward(hidden_states, **kwargs)  # type: ignore[arg-type]
    bsz, length, dim = hidden_states.size()
    q, k, v = (self.qkv(hidden_states).reshape(bsz, length, 3, self.num_heads, self.head_dim)
               .permute(2, 0, 3, 1, 4).unbind(0))
    p = self.dropout.p if self.training else 0.0
    ctx = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
    return self.projection(ctx.transpose(1, 2).reshape(bsz, length, dim)), None


@functools.cache
def _fused_blip_attention() -> type | None:
    try:
        from transformers.models.blip.modeling_blip import BlipAttention
    except ImportError:  # pragma: no cover - a transformers without BLIP
        return None
    return type("FusedBlipAttention", (BlipAttention,), {"forward": _sdpa_forward, "__module__": __name__})


# glibc's malloc serves a block from its heap, and reuses it, once the block is at most its
# mmap threshold, which adapts up to 32 MiB; a bigger block is mapped fresh, and every page of
# it faults on first touch. Half of that, so that a chunk's largest tensor stays on the heap.
_CHUNK_BYTES = 16 * 2**20


def chunk_blip_vision(model: Any) -> int:
    """Run a BLIP vision tower on a CPU in chunks of images small enough for the allocator.

    Batched by 16 at 384 px, the tower's MLP makes 113 MB activations (16 x 577 x 3072
    floats at blip-base size), and its attention input 85 MB. glibc maps each such block
    fresh and unmaps it when freed, so every batch took about a million page faults (about
    4 GB of memory first touched). In chunks whose largest activation is at most 16 MiB
    (:func:`_vision_chunk`), the same blocks come back from the heap: no faults, and captions
    took about a tenth less time per image (docs/benchmarks.md). The tower has no cross-image
    operation, so each image's features are computed as before.

    Chunks are used on a CPU, in eval mode, when neither hidden states nor attentions are
    recorded; otherwise the tower runs as transformers' own. Modules that are exactly
    ``BlipVisionModel`` become ``ChunkedBlipVisionModel``, a subclass. Returns how many changed.
    """
    return retype(model, _chunked_blip_vision())


def _vision_chunk(config: Any, pixel_values: torch.Tensor, dtype: torch.dtype) -> int:
    """Images per chunk: the most whose largest activation (in the tower's ``dtype``) fits in
    _CHUNK_BYTES, at least 1 (2 at blip-base size in fp32, 1 at blip-large size). The largest is
    the MLP's or the attention input's (the fused attention's probabilities are never materialised)."""
    patch = int(getattr(config, "patch_size", 16))
    tokens = (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch) + 1
    width = max(int(getattr(config, "intermediate_size", 0)), 3 * int(getattr(config, "hidden_size", 0)), 1)
    return max(1, _CHUNK_BYTES // (tokens * width * dtype.itemsize))


@functools.cache
def _chunked_blip_vision() -> type | None:
    try:
        from transformers.models.blip.modeling_blip import BlipVisionModel
    except ImportError:  # pragma: no cover
        return None

    def forward(self: Any, pixel_values: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        # what transformers records per forward (hidden states, attentions: asked for in the
        # call or in the config; 0 selects a layer) can't be joined across chunks
        asked = [getattr(self.config, key, None) if kwargs.get(key) is None else kwargs[key]
                 for key in ("output_hidden_states", "output_attentions")]
        records = any(value is not None and value is not False for value in asked)
        if pixel_values is None or args or records or self.training or pixel_values.device.type != "cpu":
            return BlipVisionModel.forward(self, pixel_values, *args, **kwargs)
        step = _vision_chunk(self.config, pixel_values, self.dtype)
        if pixel_values.shape[0] <= step:
            return BlipVisionModel.forward(self, pixel_values, *args, **kwargs)
        parts = [BlipVisionModel.forward(self, pixel_values[i : i + step], **kwargs)
                 for i in range(0, pixel_values.shape[0], step)]
        fields = [tuple(part) if isinstance(part, tuple) else tuple(part.values()) for part in parts]
        if not all(isinstance(value, torch.Tensor) for value in fields[0]):  # pragma: no cover - a backstop
            return BlipVisionModel.forward(self, pixel_values, **kwargs)
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(values) for values in zip(*fields))
        return type(parts[0])(**{key: torch.cat([part[key] for part in parts]) for key in parts[0]})

    cls = type("ChunkedBlipVisionModel", (BlipVisionModel,), {"forward": forward, "__module__": __name__})
    try:  # transformers 5 looks up what a model records (hidden states, attentions) by class name
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

        dict.__setitem__(_CAN_RECORD_REGISTRY, str(cls), BlipVisionModel._can_record_outputs)
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - other versions
        pass
    return cls


def absorb_blip_cross_attention(model: Any) -> int:
    """Let a BLIP text decoder's cross-attention attend in the image encoder's own space (CPU).

    Greedy captioning spends a third of the decoder's time on the cross-attention's keys and
    values: every layer projects every image's 577 tokens once (16 GFLOP per image at
    blip-base size), then every generated token reads all of those projections back (1.4 GB
    per image over 32 tokens, in fp32). Both projections are linear, so they can be folded
    into the query and the output instead ("absorbed", as in DeepSeek-V2's attention): with
    ``q W_k`` per head, the scores are ``(q W_k) X^T`` over the encoder states ``X`` (the key
    bias adds the same ``q . b_k`` to every score of a row, which the softmax cancels), and the
    output is ``(p X) W_v^T + b_v``, since each row of ``p`` sums to one. The price is attention
    arithmetic in the encoder's width, heads times more per generated token: at blip-base size
    it breaks even with the projections at about 70 tokens, and captions stop at 32, where the
    decoder took about a quarter less time per image (docs/benchmarks.md). fp32 gives the same
    tokens, the scores equal to float rounding.

    It runs on a CPU, in eval mode, where encoder states are given; elsewhere (a GPU, bound by
    kernel launches, or training) the forward is transformers' own. The ``crossattention``
    modules become ``AbsorbedBlipCrossAttention``, a subclass that returns the attention
    probabilities as transformers does; transformers before 5 (whose attention returns its own
    cache) is left alone. Returns how many modules changed.
    """
    n = retype(model, _absorbed_blip_cross_attention(), lambda name, module: (
        name.endswith("crossattention.self")
        and isinstance(getattr(module, "key", None), torch.nn.Linear)
        and isinstance(getattr(module, "value", None), torch.nn.Linear)
        and module.key.out_features == module.num_attention_heads * module.attention_head_size))
    log.debug("BLIP cross-attention: %d modules absorbed", n)
    return n


# The parameters of transformers 5's BlipTextSelfAttention.forward (the cache's name changed
# within 5); 4.x also takes head_mask, past_key_value and output_attentions, and returns a cache.
_TEXT_ATTENTION_PARAMS = {"self", "hidden_states", "attention_mask", "encoder_hidden_states",
                          "encoder_attention_mask", "cache", "past_key_values", "kwargs"}


@functools.cache
def _absorbed_blip_cross_attention() -> type | None:
    try:
        from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention
    except ImportError:  # pragma: no cover - a transformers without BLIP
        return None
    if not set(inspect.signature(BlipTextSelfAttention.forward).parameters) <= _TEXT_ATTENTION_PARAMS:
        return None

    def forward(self: Any, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        x = encoder_hidden_states
        # (bmm doesn't broadcast: one image's states for many prompts go to transformers' matmul)
        if x is None or self.training or x.device.type != "cpu" or x.shape[0] != hidden_states.shape[0]:
            return BlipTextSelfAttention.forward(
                self, hidden_states, attention_mask=attention_mask, encoder_hidden_states=x,
                encoder_attention_mask=encoder_attention_mask, **kwargs)
        bsz, length, _ = hidden_states.shape
        heads, dim = self.num_attention_heads, self.attention_head_size
        tokens, width = x.shape[1], x.shape[2]
        # per head h: q_h W_k,h, a query in the encoder's width
        q = self.query(hidden_states).view(bsz * length, heads, dim).transpose(0, 1)
        qk = torch.bmm(q, self.key.weight.view(heads, dim, width))
        qk = qk.view(heads, bsz, length, width).transpose(0, 1).reshape(bsz, heads * length, width)
        scores = torch.bmm(qk, x.transpose(1, 2)).view(bsz, heads, length, tokens) / math.sqrt(dim)
        if encoder_attention_mask is not None:
            scores = scores + encoder_attention_mask.to(scores.device)
        probs = scores.softmax(dim=-1)
        px = torch.bmm(probs.view(bsz, heads * length, tokens), x)
        px = px.view(bsz, heads, length, width).transpose(0, 1).reshape(heads, bsz * length, width)
        w_v = self.value.weight.view(heads, dim, width).transpose(1, 2)
        if self.value.bias is None:
            ctx = torch.bmm(px, w_v)
        else:
            ctx = torch.baddbmm(self.value.bias.view(heads, 1, dim), px, w_v)
        return ctx.view(heads, bsz, length, dim).permute(1, 2, 0, 3).reshape(bsz, length, heads * dim), probs

    return type("AbsorbedBlipCrossAttention", (BlipTextSelfAttention,),
                {"forward": forward, "__module__": __name__})


def __getattr__(name: str) -> Any:
    # Module-level names for the classes built above, so that a changed model pickles.
    made = {"FusedBlipAttention": _fused_blip_attention,
            "AbsorbedBlipCrossAttention": _absorbed_blip_cross_attention,
            "ChunkedBlipVisionModel": _chunked_blip_vision}.get(name)
    if made is not None and made() is not None:
        return made()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fuse_blip_vision_attention(model: Any) -> int:
    """Run a BLIP vision tower's attention through ``scaled_dot_product_attention``.

    transformers' BLIP (unlike BLIP-2 and GIT) hard-codes eager attention: at 384 px the
    tower's 577 tokens make it materialise, scale and softmax a 577x577 matrix per head. The
    fused kernel computes the same attention (equal to float rounding) without those passes:
    a fifth less time for the tower on a CPU (docs/benchmarks.md). Modules that are exactly
    ``BlipAttention`` with the attributes the fused forward reads become ``FusedBlipAttention``,
    a subclass, on this model only. It returns no attention weights (BLIP's encoder layer discards
    them): ``output_attentions=True`` gets none on transformers 5, the eager path before it.
    Returns how many changed.
    """
    n = retype(model, _fused_blip_attention(), lambda name, module: all(
        hasattr(module, a) for a in ("qkv", "projection", "num_heads", "head_dim", "scale", "dropout")))
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
