"""CLIP encoders (open_clip and transformers) behind one interface.

Encoders return L2-normalised float32 numpy arrays. Text is encoded without
padding beyond each batch's longest sequence when the tower is causal and pools
at the end token (then tokens after the end token cannot change the output);
other towers are padded to the full context.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelLoadError
from ..prompt.assemble import SEPARATOR
from ._registry import ClipSpec, parse_clip_name
from .device import DeviceLike, dtype_name, resolve_device, resolve_dtype
from .tokenizers import HFTokenizerAdapter, OpenClipSimpleTokenizer, TextTokenizer, model_ids

log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]

#: Activation memory one text batch may use, by device type (``--memory-budget`` overrides it).
#: Batches are sized from this, so peak memory does not grow with the number of candidates.
DEFAULT_MEMORY_BUDGET_MB = {"cpu": 512, "mps": 1024, "cuda": 2048}
MAX_BATCH = 1024


#: A batch may pad at most this share of its token positions (sequences are sorted by length,
#: so this only splits batches whose lengths spread widely).
MAX_PADDING = 0.25


def plan_batches(widths: np.ndarray, rows_for: Callable[[int], int]) -> list[tuple[int, int]]:
    """Split length-sorted sequences into [start, stop) batches that fit the memory budget
    (``rows_for(width)`` rows of that width) and waste at most MAX_PADDING on padding."""
    out: list[tuple[int, int]] = []
    fits: dict[int, int] = {}
    n, start = len(widths), 0
    while start < n:
        stop, real = start + 1, int(widths[start])
        while stop < n:
            w = int(widths[stop])
            if w not in fits:
                fits[w] = rows_for(w)
            count = stop - start + 1
            if count > fits[w] or count * w > (real + w) * (1 + MAX_PADDING):
                break
            real += w
            stop += 1
        out.append((start, stop))
        start = stop
    return out


def _hub_hint() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        HF_HUB_CACHE = "~/.cache/huggingface/hub"
    return (
        "Weights are downloaded from the Hugging Face Hub on first use; offline (HF_HUB_OFFLINE=1) "
        f"they must already be in {HF_HUB_CACHE}. To use weights on disk, pass local-dir:PATH."
    )


class ClipEncoder:
    """Common behaviour of the CLIP backends; subclasses implement the forward passes."""

    backend: str = ""

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

    # -- description -------------------------------------------------------
    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, device={self.device}, dtype={dtype_name(self.dtype)})"

    @property
    def padding_free(self) -> bool:
        """Whether batches may stop at their longest sequence (causal tower, end-token pooling)."""
        raise NotImplementedError

    # -- tokens ------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def token_ids(self, texts: Iterable[str]) -> list[list[int]]:
        """Model input ids (with start/end, truncated to the context) for each text."""
        return [model_ids(self.tokenizer, self.tokenizer.encode(t)) for t in texts]

    # -- encoding ----------------------------------------------------------
    def encode_texts(self, texts: Sequence[str], *, progress: ProgressFn | None = None) -> np.ndarray:
        return self.encode_ids(self.token_ids(texts), progress=progress)

    def embed_labels(self, labels: Sequence[str], *,
                     progress: ProgressFn | None = None) -> tuple[np.ndarray, list[list[int]]]:
        """Embed a phrase table; also return each label's token ids (no start/end, untruncated),
        which the prefix scorer reuses so chain steps need no tokenizing."""
        bpe = [self.tokenizer.encode(t) for t in labels]
        feats = self.encode_ids([model_ids(self.tokenizer, b) for b in bpe], progress=progress)
        self.remember_token_ids(labels, bpe)
        return feats, bpe

    def remember_token_ids(self, labels: Sequence[str], ids: Sequence[Sequence[int]]) -> None:
        scorer = self.prefix_scorer()
        if scorer is not None:
            scorer.remember(labels, ids)

    def encode_ids(self, ids: Sequence[Sequence[int]], *, progress: ProgressFn | None = None,
                   normalize: bool = True) -> np.ndarray:
        """Encode token-id sequences; the result keeps the input order."""
        n = len(ids)
        out = np.empty((n, self.embed_dim), dtype=np.float32)
        if n == 0:
            return out
        lengths = np.fromiter((len(s) for s in ids), dtype=np.int64, count=n)
        order = np.argsort(lengths, kind="stable")
        for batch in self._batches(order, lengths):
            width = int(lengths[batch].max()) if self.padding_free else self.context_length
            feats = self._encode_padded([ids[i] for i in batch], width)
            out[batch] = feats
            if progress is not None:
                progress(len(batch))
        if normalize:
            out /= np.linalg.norm(out, axis=1, keepdims=True).clip(min=1e-12)
        return out

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

    def _batches(self, order: np.ndarray, lengths: np.ndarray) -> Iterable[np.ndarray]:
        widths = lengths[order] if self.padding_free else np.full(len(order), self.context_length)
        for start, stop in plan_batches(widths, self.rows_for):
            yield order[start:stop]

    def _encode_padded(self, seqs: list[Sequence[int]], width: int) -> np.ndarray:
        pad = self.tokenizer.pad_id
        arr = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            arr[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[row, : len(s)] = 1
        with self._lock, torch.inference_mode():
            feats = self._forward_text(arr.to(self.device), mask.to(self.device))
            self.tokens_encoded += arr.numel()
        return feats.float().cpu().numpy()

    def encode_images(self, images: Sequence[Any], *, batch_size: int = 16) -> np.ndarray:
        """Encode PIL images; returns [N, D] float32, L2-normalised."""
        outs = []
        for start in range(0, len(images), batch_size):
            pixels = self._preprocess(images[start : start + batch_size])
            with self._lock, torch.inference_mode():
                feats = self._forward_images(pixels.to(self.device, self.dtype))
            outs.append(F.normalize(feats.float(), dim=-1).cpu().numpy())
        if not outs:
            return np.empty((0, self.embed_dim), np.float32)
        return np.concatenate(outs, axis=0)

    def encode_extensions(self, prefix: str, phrases: Sequence[str]) -> np.ndarray:
        """Normalised features of ``prefix + ", " + phrase`` for each phrase.

        Uses the prefix-cached scorer where the tower allows it (causal, end-token
        pooled, standard layout); otherwise a full encode.
        """
        return self.encode_extensions_many([(prefix, phrases)])[0]

    def encode_extensions_many(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[np.ndarray]:
        """:meth:`encode_extensions` for several prefixes; their phrases share encoder batches."""
        scorer = self.prefix_scorer()
        if scorer is not None:
            return scorer.encode_many(requests)
        texts = [prefix + SEPARATOR + p for prefix, phrases in requests for p in phrases]
        feats = self.encode_texts(texts)
        bounds = np.cumsum([0] + [len(phrases) for _, phrases in requests])
        return [feats[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def prefix_scorer(self) -> Any:
        if not hasattr(self, "_prefix_scorer"):
            from .prefix import PrefixScorer

            parts = self._tower_parts() if self.padding_free and self.prefix_caching else None
            self._prefix_scorer = PrefixScorer(self, parts) if parts is not None else None
        return self._prefix_scorer

    prefix_caching = True  # set False to force full encodes (benchmarks, A/B checks)

    def _tower_parts(self) -> Any:
        return None

    # -- placement (low-VRAM offloading) -------------------------------------
    def offload(self) -> None:
        if self._home.type != "cpu":
            with self._lock:
                self._model().to("cpu")
                self.device = torch.device("cpu")

    def activate(self) -> None:
        if self.device != self._home:
            with self._lock:
                self._model().to(self._home)
                self.device = self._home

    # -- backend hooks -----------------------------------------------------
    def _model(self) -> torch.nn.Module:
        raise NotImplementedError

    def _forward_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        raise NotImplementedError


class OpenClipEncoder(ClipEncoder):
    backend = "open_clip"

    def __init__(self, spec: ClipSpec, model: Any, preprocess: Any, tokenizer: TextTokenizer,
                 device: torch.device, dtype: torch.dtype, memory_budget_mb: int | None = None) -> None:
        self.model = model
        self.preprocess = preprocess
        embed_dim = int(getattr(model.text_projection, "shape", [0, 0])[1]) if not isinstance(
            model.text_projection, torch.nn.Linear) else int(model.text_projection.out_features)
        emb = getattr(model, "token_embedding", None)
        width = int(emb.weight.shape[1]) if emb is not None else 1024
        blocks = getattr(getattr(model, "transformer", None), "resblocks", None)
        heads = int(getattr(blocks[0].attn, "num_heads", 16)) if blocks else 16
        super().__init__(spec, device, dtype, tokenizer, embed_dim, memory_budget_mb, width, heads)
        self._builtin_text = all(hasattr(model, a) for a in ("transformer", "token_embedding", "attn_mask"))

    @property
    def padding_free(self) -> bool:
        m = self.model
        return (
            self._builtin_text
            and isinstance(self.tokenizer, OpenClipSimpleTokenizer)
            and m.attn_mask is not None
            and getattr(m, "text_pool_type", "argmax") in ("argmax", "eos")
        )

    def _model(self) -> torch.nn.Module:
        return self.model

    def _forward_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = self.model
        if not self._builtin_text:
            return m.encode_text(ids)
        from open_clip.transformer import text_global_pool

        length = ids.shape[1]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(ids).to(cast) + m.positional_embedding[:length].to(cast)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask[:length, :length]))
        x = text_global_pool(x, ids, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        proj = m.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    def _forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _tower_parts(self) -> Any:
        from .prefix import open_clip_parts

        return open_clip_parts(self.model) if self._builtin_text else None

    def _preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        return torch.stack([self.preprocess(im) for im in images])


class HFClipEncoder(ClipEncoder):
    backend = "transformers"

    def __init__(self, spec: ClipSpec, model: Any, processor: Any, device: torch.device,
                 dtype: torch.dtype, memory_budget_mb: int | None = None) -> None:
        self.model = model
        self.processor = processor
        tcfg = model.config.text_config
        tok = HFTokenizerAdapter(processor.tokenizer, int(tcfg.max_position_embeddings))
        super().__init__(spec, device, dtype, tok, int(model.config.projection_dim), memory_budget_mb,
                         int(tcfg.hidden_size), int(tcfg.num_attention_heads))

    @property
    def padding_free(self) -> bool:
        # CLIPTextTransformer is always causal and pools at the first end token
        # (or at the argmax id for legacy configs, where the end id is also the largest).
        return True

    def _model(self) -> torch.nn.Module:
        return self.model

    def _forward_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model.text_model(input_ids=ids, attention_mask=mask)
        return self.model.text_projection(out.pooler_output)

    def _tower_parts(self) -> Any:
        from .prefix import hf_clip_parts

        return hf_clip_parts(self.model)

    def _forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model.vision_model(pixel_values=pixels)
        return self.model.visual_projection(out.pooler_output)

    def _preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        return self.processor(images=list(images), return_tensors="pt")["pixel_values"]


def load_clip(name: str, *, device: DeviceLike = "auto", precision: str = "auto",
              memory_budget_mb: int | None = None) -> ClipEncoder:
    """Load a CLIP model by name. Never falls back to random weights: failures raise ModelLoadError."""
    spec = parse_clip_name(name)
    dev = resolve_device(device)
    dtype = resolve_dtype(dev, precision)
    log.info("loading CLIP %s (%s) on %s as %s", spec.name, spec.backend, dev, dtype_name(dtype))
    if spec.backend == "open_clip":
        return _load_open_clip(spec, dev, dtype, memory_budget_mb)
    return _load_hf_clip(spec, dev, dtype, memory_budget_mb)


def _load_open_clip(spec: ClipSpec, dev: torch.device, dtype: torch.dtype, memory_budget_mb: int | None) -> ClipEncoder:
    import open_clip

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.source, pretrained=spec.pretrained, device=dev, jit=False,
            # open_clip requires pretrained weights when a tag is given and raises otherwise;
            # local-dir: folders were checked for a weights file when the name was parsed.
        )
        tokenizer = open_clip.get_tokenizer(spec.source)
    except Exception as e:  # noqa: BLE001 - open_clip raises many types; all mean "could not load"
        raise ModelLoadError(f"could not load CLIP model {spec.name!r}: {_short(e)}. {_hub_hint()}") from e
    model = model.to(dev, dtype).eval()
    ctx = int(getattr(tokenizer, "context_length", None) or model.context_length)
    if isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer):
        tok: TextTokenizer = OpenClipSimpleTokenizer(tokenizer, ctx)
    else:
        tok = _OpenClipOtherTokenizer(tokenizer, ctx)
    return OpenClipEncoder(spec, model, preprocess, tok, dev, dtype, memory_budget_mb)


class _OpenClipOtherTokenizer:
    """Fallback for open_clip tokenizers other than the CLIP BPE one (e.g. HF tokenizers)."""

    def __init__(self, tok: Any, context_length: int) -> None:
        self._tok = tok
        inner = getattr(tok, "tokenizer", None)
        self._inner = inner
        self.sot_id = int(getattr(inner, "bos_token_id", None) or 0) if inner is not None else 0
        self.eot_id = int(getattr(inner, "eos_token_id", None) or 0) if inner is not None else 0
        self.pad_id = int(getattr(inner, "pad_token_id", None) or 0) if inner is not None else 0
        self.context_length = context_length

    def encode(self, text: str) -> list[int]:
        if self._inner is not None:
            return list(self._inner(text, add_special_tokens=False)["input_ids"])
        row = self._tok([text])[0].tolist()
        return [t for t in row if t != self.pad_id]


def _load_hf_clip(spec: ClipSpec, dev: torch.device, dtype: torch.dtype, memory_budget_mb: int | None) -> ClipEncoder:
    from transformers import CLIPModel, CLIPProcessor

    model, processor = load_transformers(CLIPModel, CLIPProcessor, spec.source, dtype, dev,
                                         what=f"CLIP model {spec.name!r}")
    return HFClipEncoder(spec, model, processor, dev, dtype, memory_budget_mb)


def load_transformers(model_cls: Any, processor_cls: Any, source: str, dtype: torch.dtype, dev: torch.device,
                      what: str) -> tuple[Any, Any]:
    """from_pretrained for a model and its processor; any failure or missing weight is a ModelLoadError."""
    try:
        model, info = model_cls.from_pretrained(source, dtype=dtype, output_loading_info=True)
        processor = processor_cls.from_pretrained(source)
    except Exception as e:  # noqa: BLE001 - transformers raises many types; all mean "could not load"
        raise ModelLoadError(f"could not load {what}: {_short(e)}. {_hub_hint()}") from e
    require_complete(what, info)
    return model.to(dev).eval(), processor


def require_complete(name: str, loading_info: dict) -> None:
    """transformers initialises missing weights randomly with only a warning: make that an error."""
    missing = [k for k in loading_info.get("missing_keys", ()) if "position_ids" not in k]
    if missing:
        shown = ", ".join(sorted(missing)[:5])
        raise ModelLoadError(
            f"{name}: the checkpoint lacks {len(missing)} weights ({shown}...); "
            "refusing to run with randomly initialised layers"
        )


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg if len(msg) < 300 else msg[:297] + "..."
