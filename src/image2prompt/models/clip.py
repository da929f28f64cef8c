"""CLIP encoders (open_clip and transformers) behind one interface; plugins add backends.

Encoders return L2-normalised float32 numpy arrays. Text is encoded without
padding beyond each batch's longest sequence when the tower is causal and pools
at the end token (then tokens after the end token cannot change the output).
open_clip towers that are not the standard causal CLIP one (SigLIP, towers
from transformers such as XLM-RoBERTa, bidirectional or CLS-pooled ones) are
given exactly what open_clip would give them: its own tokenizer's padded ids,
through ``model.encode_text``.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelLoadError, one_line
from ..syntax import SEPARATOR
from ._registry import ClipSpec, clip_plugin, parse_clip_name
from .activations import lean_quick_gelu, native_gelu
from .batching import plan_batches
from .device import DeviceLike, LoadedModel, dtype_name, resolve_device, resolve_dtype
from .loading import CLIP_ADVICE, call_plugin, from_hub, load_transformers, processor_input_side, transform_input_side
from .prefix import PrefixScorer, TowerParts, hf_clip_parts, open_clip_parts, project
from .tokenizers import HFTokenizerAdapter, OpenClipSimpleTokenizer, TextTokenizer, model_ids

log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]
#: label -> token ids without start/end tokens, untruncated (what ``embed_labels`` returns).
PhraseIds = Mapping[str, Sequence[int]]

#: Activation memory one text batch may use, by device type (``--memory-budget`` overrides it).
#: Batches are sized from this, so peak memory does not grow with the number of candidates.
DEFAULT_MEMORY_BUDGET_MB = {"cpu": 512, "mps": 1024, "cuda": 2048}
MAX_BATCH = 1024


class ClipEncoder(LoadedModel):
    """Common behaviour of the CLIP backends; subclasses implement the forward passes."""

    backend: str = ""

    #: Built with QuickGELU where open_clip would build GELU (:func:`tag_needs_quick_gelu`):
    #: embeddings cached by an image2prompt that did not are stale.
    quick_gelu_forced: bool = False

    #: Texts go through the backend's own tokenizer and text forward, padded as it pads
    #: them: for towers where our ids and batching would not give exactly its features.
    native_text = False

    #: Whether batches may stop at their longest sequence (causal tower, end-token pooling).
    padding_free: bool

    def __init__(self, spec: ClipSpec, device: torch.device, dtype: torch.dtype,
                 tokenizer: TextTokenizer, embed_dim: int, memory_budget_mb: int | None,
                 text_width: int, text_heads: int) -> None:
        self.spec = spec
        self.name = spec.name
        self.cache_key = spec.cache_key
        self.device = device
        self.dtype = dtype
        self.tokenizer = tokenizer
        self.context_length = tokenizer.context_length
        self.embed_dim = embed_dim
        mb = memory_budget_mb or DEFAULT_MEMORY_BUDGET_MB.get(device.type, 512)
        self.memory_budget = int(mb) * 2**20  # bytes
        self.text_width, self.text_heads = text_width, text_heads
        self._lock = threading.RLock()
        self._home = device  # where the weights live when active (offloading moves them to CPU)
        self.tokens_encoded = 0  # token positions run through the text tower (for benchmarks)

    @property
    def input_side(self) -> int | None:
        """The largest side (pixels) preprocessing resizes or crops images to: an image whose shorter
        side is at least this loses nothing to a reduction first (None: not known, do not reduce)."""
        return None

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def token_ids(self, texts: Iterable[str]) -> list[list[int]]:
        """Model input ids (with start/end, truncated to the context) for each text."""
        return [model_ids(self.tokenizer, self.tokenizer.encode(t)) for t in texts]

    def encode_texts(self, texts: Sequence[str], *, progress: ProgressFn | None = None) -> np.ndarray:
        if self.native_text:
            return self._encode_native(texts, progress=progress)
        return self.encode_ids(self.token_ids(texts), progress=progress)

    def embed_labels(self, labels: Sequence[str], *,
                     progress: ProgressFn | None = None) -> tuple[np.ndarray, list[list[int]]]:
        """Embed a phrase table; also return each label's token ids (no start/end, untruncated).

        Callers keep the ids (the index does, and the cache stores them) and hand them back to
        :meth:`encode_extensions_many` as ``phrase_ids``, so chain steps need no tokenizing.
        """
        bpe = [self.tokenizer.encode(t) for t in labels]
        if self.native_text:
            return self._encode_native(labels, progress=progress), bpe
        return self.encode_ids([model_ids(self.tokenizer, b) for b in bpe], progress=progress), bpe

    def encode_ids(self, ids: Sequence[Sequence[int]], *, progress: ProgressFn | None = None) -> np.ndarray:
        """Encode token-id sequences (normalised); the result keeps the input order."""
        n = len(ids)
        out = np.empty((n, self.embed_dim), dtype=np.float32)
        lengths = np.fromiter((len(s) for s in ids), dtype=np.int64, count=n)
        order = np.argsort(lengths, kind="stable")
        widths = lengths[order] if self.padding_free else np.full(n, self.context_length)
        for start, stop in plan_batches(widths, self.rows_for):
            batch = order[start:stop]
            arr = torch.full((len(batch), int(widths[stop - 1])), self.tokenizer.pad_id, dtype=torch.long)
            mask = torch.zeros_like(arr)
            for row, i in enumerate(batch):
                arr[row, : len(ids[i])] = torch.as_tensor(ids[i], dtype=torch.long)
                mask[row, : len(ids[i])] = 1
            with self._lock, torch.inference_mode():
                feats = self._forward_text(arr.to(self.device), mask.to(self.device))
                self.tokens_encoded += arr.numel()
            out[batch] = feats.float().cpu().numpy()
            if progress is not None:
                progress(len(batch))
        return _normalized(out)

    def rows_for(self, length: int, prefix: int = 0) -> int:
        """How many sequences of ``length`` tokens (attending to ``prefix`` cached ones) fit the budget.

        Per row, one layer holds about: keys and values over prefix + sequence, the
        query/attention output/MLP activations of the sequence (~8 widths), and fp32
        attention scores. Layers run one after another, so this bounds the peak.
        """
        elem = torch.finfo(self.dtype).bits // 8
        w, h = self.text_width, self.text_heads
        row = elem * w * (2 * (prefix + length) + 8 * length) + 4 * h * length * (prefix + length)
        return int(max(1, min(MAX_BATCH, self.memory_budget // max(1, row))))

    def encode_images(self, images: Sequence[Any], *, batch_size: int = 16) -> np.ndarray:
        """Encode PIL images; returns [N, D] float32, L2-normalised."""
        outs = [np.empty((0, self.embed_dim), np.float32)]
        for start in range(0, len(images), batch_size):
            pixels = self._preprocess(images[start : start + batch_size])
            with self._lock, torch.inference_mode():
                feats = self._forward_images(pixels.to(self.device, self.dtype))
            outs.append(F.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(outs, axis=0)

    def encode_extensions(self, prefix: str, phrases: Sequence[str], *,
                          phrase_ids: PhraseIds | None = None) -> np.ndarray:
        """Normalised features [N, D] of ``prefix + ", " + phrase`` for each phrase.

        Uses the prefix-cached scorer where the tower allows it, else a full encode. ``phrase_ids``
        maps phrases to their token ids as :meth:`embed_labels` returned them; others are tokenized here.
        """
        return self.encode_extensions_many([(prefix, phrases)], phrase_ids=phrase_ids)[0]

    def encode_extensions_many(self, requests: Sequence[tuple[str, Sequence[str]]], *,
                               phrase_ids: PhraseIds | None = None) -> list[np.ndarray]:
        """:meth:`encode_extensions` for several ``(prefix, phrases)`` requests, in order;
        their phrases share encoder batches. One [len(phrases), D] array per request."""
        scorer = self.prefix_scorer()
        if scorer is not None:
            return scorer.encode_many(requests, phrase_ids=phrase_ids)
        feats = self.encode_texts([prefix + SEPARATOR + p for prefix, phrases in requests for p in phrases])
        bounds = np.cumsum([0] + [len(phrases) for _, phrases in requests])
        return [feats[a:b] for a, b in itertools.pairwise(bounds)]

    def prefix_scorer(self) -> PrefixScorer | None:
        """The prefix-cached scorer, or None where it would not be exact."""
        if not hasattr(self, "_prefix_scorer"):
            parts = self._tower_parts() if self.padding_free else None
            self._prefix_scorer = PrefixScorer(self, parts) if parts is not None else None
        return self._prefix_scorer

    def _tower_parts(self) -> TowerParts | None:
        return None

    def _encode_native(self, texts: Sequence[str], *, progress: ProgressFn | None = None) -> np.ndarray:
        """Encode texts the backend's own way (for ``native_text`` towers)."""
        raise NotImplementedError

    # -- backend hooks -----------------------------------------------------
    def _forward_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        raise NotImplementedError


def _normalized(feats: np.ndarray) -> np.ndarray:
    feats /= np.linalg.norm(feats, axis=1, keepdims=True).clip(min=1e-12)
    return feats


def text_tower(model: Any) -> Any:
    """The module holding an open_clip model's text tower: ``model.text`` for
    ``CustomTextCLIP`` (SigLIP, towers from transformers), else the model itself."""
    text = getattr(model, "text", None)
    return text if isinstance(text, torch.nn.Module) else model


def tower_pool_type(tower: Any) -> str | None:
    """How the tower pools: ``text_pool_type`` (CLIP) or ``pool_type`` (TextTransformer)."""
    pool = getattr(tower, "text_pool_type", None) or getattr(tower, "pool_type", None)
    return pool if isinstance(pool, str) else None


def tower_eos_id(tower: Any) -> int | None:
    eos = getattr(tower, "text_eos_id", None)
    if eos is None:
        eos = getattr(tower, "eos_id", None)
    return int(eos) if eos is not None else None


def is_standard_text_tower(tower: Any, tokenizer: Any, native_tokenizer: Any = None) -> bool:
    """Whether our ids and padding-free batching give exactly open_clip's features.

    That holds for the classic CLIP layout: token and position embeddings, a
    transformer under a causal mask, a final norm, pooling at the end token
    (``argmax`` with the CLIP BPE, whose end id is the largest, or ``eos`` at that
    id), no appended CLS token, and open_clip's ``SimpleTokenizer`` truncating
    (not reducing) long texts.
    """
    if not all(hasattr(tower, a) for a in ("token_embedding", "positional_embedding", "transformer",
                                            "ln_final", "attn_mask")):
        return False
    if (tower.attn_mask is None or getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False)
            or not isinstance(tokenizer, OpenClipSimpleTokenizer)
            or getattr(native_tokenizer, "reduction_fn", None) is not None):
        return False
    pool = tower_pool_type(tower)
    if pool == "argmax":
        return tokenizer.eot_id > tokenizer.sot_id  # the end id is the largest one in a sequence
    return pool == "eos" and tower_eos_id(tower) == tokenizer.eot_id


def _tower_width_heads(tower: Any) -> tuple[int, int]:
    """Width and head count of a text tower, for sizing batches (safe fallbacks)."""
    emb = getattr(tower, "token_embedding", None)
    cfg = getattr(tower, "config", None)
    width = (int(emb.weight.shape[1]) if isinstance(emb, torch.nn.Embedding)
             else getattr(tower, "width", None) or getattr(cfg, "hidden_size", None) or 1024)
    blocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
    heads = getattr(getattr(blocks[0], "attn", None), "num_heads", None) if blocks else None
    heads = heads or getattr(tower, "heads", None) or getattr(cfg, "num_attention_heads", None) or 16
    return int(width), int(heads)


def _tower_embed_dim(tower: Any, width: int) -> int | None:
    """The text features' size, read off the projection; None when it cannot be read."""
    if not hasattr(tower, "text_projection"):
        dim = getattr(tower, "output_dim", None)
        return int(dim) if isinstance(dim, int) and dim > 0 else None
    proj = tower.text_projection
    if proj is None:
        return width
    if isinstance(proj, torch.nn.Linear):
        return int(proj.out_features)
    return int(proj.shape[1]) if isinstance(proj, torch.Tensor) and proj.dim() == 2 else None


class OpenClipEncoder(ClipEncoder):
    backend = "open_clip"

    def __init__(self, spec: ClipSpec, model: Any, preprocess: Any, tokenizer: TextTokenizer,
                 device: torch.device, dtype: torch.dtype, memory_budget_mb: int | None = None,
                 native_tokenizer: Any = None) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tower = text_tower(model)
        # the text tower sees ever-varying shapes: no oneDNN kernel per shape (models/activations.py);
        # this changes the given model's GELU modules in place
        text = self.tower if self.tower is not model else getattr(model, "transformer", None)
        if text is not None:
            native_gelu(text)
            lean_quick_gelu(text)
        #: open_clip's own tokenizer (``texts -> [N, context] ids``), for non-standard towers.
        self.native_tokenizer = native_tokenizer
        self.standard_text = is_standard_text_tower(self.tower, tokenizer, native_tokenizer)
        if not self.standard_text and native_tokenizer is None:
            raise ModelLoadError(f"{spec.name}: this text tower needs open_clip's own tokenizer")
        self.native_text = not self.standard_text
        self.padding_free = self.standard_text
        width, heads = _tower_width_heads(self.tower)
        embed_dim = _tower_embed_dim(self.tower, width)
        if embed_dim is None:  # read it off one encode
            with torch.inference_mode():
                embed_dim = int(model.encode_text(native_tokenizer([""]).to(device)).shape[-1])
        super().__init__(spec, device, dtype, tokenizer, embed_dim, memory_budget_mb, width, heads)

    @property
    def input_side(self) -> int | None:
        visual = getattr(self.model, "visual", None)
        return transform_input_side(self.preprocess, getattr(visual, "image_size", None))

    def _forward_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.standard_text:
            return self.model.encode_text(ids)
        from open_clip.transformer import text_global_pool

        t = self.tower
        length = ids.shape[1]
        cast = t.transformer.get_cast_dtype()
        x = t.token_embedding(ids).to(cast) + t.positional_embedding[:length].to(cast)
        x = t.ln_final(t.transformer(x, attn_mask=t.attn_mask[:length, :length]))
        return project(text_global_pool(x, ids, tower_pool_type(t), eos_token_id=tower_eos_id(t)), t.text_projection)

    def _encode_native(self, texts: Sequence[str], *, progress: ProgressFn | None = None) -> np.ndarray:
        n = len(texts)
        out = np.empty((n, self.embed_dim), dtype=np.float32)
        step = self.rows_for(self.context_length)
        for start in range(0, n, step):
            chunk = [str(t) for t in texts[start : start + step]]
            ids = self.native_tokenizer(chunk)
            with self._lock, torch.inference_mode():
                feats = self.model.encode_text(ids.to(self.device))
                self.tokens_encoded += ids.numel()
            out[start : start + len(chunk)] = feats.float().cpu().numpy()
            if progress is not None:
                progress(len(chunk))
        return _normalized(out)

    def _forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _tower_parts(self) -> TowerParts | None:  # asked only of standard (padding-free) towers
        clean = getattr(getattr(self.native_tokenizer, "clean_fn", None), "__name__", "")
        if "canonicalize" in clean:  # strips punctuation: the comma need not survive as a token
            return None
        return open_clip_parts(self.tower)

    def _preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        return torch.stack([self.preprocess(im) for im in images])


class HFClipEncoder(ClipEncoder):
    backend = "transformers"

    def __init__(self, spec: ClipSpec, model: Any, processor: Any, device: torch.device,
                 dtype: torch.dtype, memory_budget_mb: int | None = None) -> None:
        self.model = model
        self.processor = processor
        native_gelu(model.text_model)  # as in OpenClipEncoder
        tcfg = model.config.text_config
        tok = HFTokenizerAdapter(processor.tokenizer, int(tcfg.max_position_embeddings))
        super().__init__(spec, device, dtype, tok, int(model.config.projection_dim), memory_budget_mb,
                         int(tcfg.hidden_size), int(tcfg.num_attention_heads))

    # CLIPTextTransformer is always causal and pools at the first end token
    # (or at the argmax id for legacy configs, where the end id is also the largest).
    padding_free = True

    @property
    def input_side(self) -> int | None:
        return processor_input_side(self.processor)

    def _forward_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model.text_model(input_ids=ids, attention_mask=mask)
        return self.model.text_projection(out.pooler_output)

    def _tower_parts(self) -> TowerParts | None:
        return hf_clip_parts(self.model)

    def _forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model.vision_model(pixel_values=pixels)
        return self.model.visual_projection(out.pooler_output)

    def _preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        return self.processor(images=list(images), return_tensors="pt")["pixel_values"]


def load_clip(name: str, *, device: DeviceLike = "auto", precision: str = "auto",
              memory_budget_mb: int | None = None, **options: Any) -> ClipEncoder:
    """Load a CLIP model by name. Never falls back to random weights: failures raise ModelLoadError.

    Plugin backends are asked first; ``options`` are passed on to a plugin's loader
    (the built-in backends take none).
    """
    plugin = clip_plugin(name)
    if plugin is not None:
        enc = call_plugin(plugin, name.strip(), "CLIP model", device="auto" if device is None else str(device),
                          precision=precision, memory_budget_mb=memory_budget_mb, **options)
        if not isinstance(enc, ClipEncoder):
            raise ModelLoadError(f"CLIP model {name.strip()!r}: the plugin returned {type(enc).__name__}, "
                                 "not a ClipEncoder")
        return enc
    if options:
        raise TypeError(f"unexpected options for the built-in CLIP backends: {', '.join(options)}")
    spec = parse_clip_name(name)
    dev = resolve_device(device)
    dtype = resolve_dtype(dev, precision)
    log.info("loading CLIP %s (%s) on %s as %s", spec.name, spec.backend, dev, dtype_name(dtype))
    if spec.backend == "open_clip":
        return _load_open_clip(spec, dev, dtype, memory_budget_mb)
    from transformers import CLIPModel, CLIPProcessor

    model, processor = load_transformers(CLIPModel, CLIPProcessor, spec.source, dtype, dev,
                                         what=f"CLIP model {spec.name!r}", remote=spec.local_path is None,
                                         advice=CLIP_ADVICE)
    return HFClipEncoder(spec, model, processor, dev, dtype, memory_budget_mb)


def _load_open_clip(spec: ClipSpec, dev: torch.device, dtype: torch.dtype, memory_budget_mb: int | None) -> ClipEncoder:
    import open_clip

    quick_gelu = tag_needs_quick_gelu(open_clip, spec.source, spec.pretrained)
    if quick_gelu:
        log.info("%s: built with QuickGELU, the activation its weights were trained with", spec.name)

    def load() -> tuple[Any, Any, Any]:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.source, pretrained=spec.pretrained, device=dev, jit=False,
            # never random weights: an hf-hub: repo whose weights cannot be fetched
            # would otherwise load with only a warning
            require_pretrained=True,
            **({"force_quick_gelu": True} if quick_gelu else {}),
        )
        return model, preprocess, open_clip.get_tokenizer(spec.source)

    # ARCH/TAG and hf-hub: names fetch from the Hub; local-dir: folders do not
    model, preprocess, tokenizer = from_hub(load, what=f"CLIP model {spec.name!r}",
                                            remote=spec.local_path is None, advice=CLIP_ADVICE)
    model = model.to(dev, dtype).eval()
    ctx = int(getattr(tokenizer, "context_length", None) or model.context_length)
    simple = isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer)
    tok: TextTokenizer = (OpenClipSimpleTokenizer if simple else _OpenClipOtherTokenizer)(tokenizer, ctx)
    try:
        enc = OpenClipEncoder(spec, model, preprocess, tok, dev, dtype, memory_budget_mb, native_tokenizer=tokenizer)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(
            f"CLIP model {spec.name!r}: its text tower is not supported ({one_line(e) or type(e).__name__})"
        ) from e
    enc.quick_gelu_forced = quick_gelu
    return enc


def tag_needs_quick_gelu(open_clip: Any, arch: str, tag: str | None) -> bool:
    """Whether open_clip's weights ``tag`` for ``arch`` were trained with QuickGELU while the
    architecture's own config builds GELU (ViT-L-14/openai, SD 1.x's text encoder, and 26
    other pairs in open_clip 3.3: OpenAI, MetaCLIP, DFN, LAION-400M e31/e32, YFCC15M, CC12M).

    From 2.29 open_clip builds every tag from the architecture's config and only warns of the
    mismatch (up to 2.28 OpenAI's weights had their own loader, with QuickGELU, and the table has
    no ``quick_gelu`` entries: this says False there).
    """
    if not tag:
        return False
    try:
        wants = bool((open_clip.get_pretrained_cfg(arch, tag) or {}).get("quick_gelu"))
        has = bool((open_clip.get_model_config(arch) or {}).get("quick_gelu"))
    except Exception:  # noqa: BLE001 - an open_clip without these tables: build as it builds
        return False
    return wants and not has


class _OpenClipOtherTokenizer:
    """Fallback for open_clip tokenizers other than the CLIP BPE one (e.g. HF tokenizers)."""

    def __init__(self, tok: Any, context_length: int) -> None:
        self._tok = tok
        self._inner = inner = getattr(tok, "tokenizer", None)
        self.sot_id = int(getattr(inner, "bos_token_id", None) or 0)
        self.eot_id = int(getattr(inner, "eos_token_id", None) or 0)
        self.pad_id = int(getattr(inner, "pad_token_id", None) or 0)
        self.context_length = context_length

    def encode(self, text: str) -> list[int]:
        if self._inner is not None:
            return list(self._inner(text, add_special_tokens=False)["input_ids"])
        row = self._tok([text])[0].tolist()
        return [t for t in row if t != self.pad_id]
