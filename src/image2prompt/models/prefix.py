"""Prefix-cached scoring of "prefix, phrase" for many phrases at once.

Every chain step scores ``current prompt + ", " + phrase`` for up to 2,048
phrases. Under the causal mask of CLIP text towers the prefix's hidden states
do not depend on what follows, so the prefix is run once, keeping each layer's
keys and values, and only each phrase's own tokens plus the end token are run
against that cache. Pooling is at the end token, so the result is the same
computation as a full encode, reordered (differences are float rounding).

Exactness conditions, each checked rather than assumed:

* Tokenisation: ids(prefix + ", " + phrase) must equal ids(prefix) + ids(",")
  + ids(phrase). The CLIP BPE splits words on whitespace and character class
  before merging, so the phrase side is context-free for ASCII text; the prefix
  side is checked once per step (a prefix ending in punctuation merges with the
  comma). Non-ASCII prefixes or phrases (where ftfy's clean-up could act across
  the boundary) are verified one by one with the full tokenizer. Any failure
  falls back to a full encode for that phrase.
* Truncation: a full sequence longer than the window keeps the first
  ``context - 2`` text tokens and then the end token; the suffix is cut the
  same way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

SEP = ", "


@dataclass
class _Layer:
    ln1: Callable[[torch.Tensor], torch.Tensor]
    qkv: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    out: Callable[[torch.Tensor], torch.Tensor]
    ls1: Callable[[torch.Tensor], torch.Tensor]
    ln2: Callable[[torch.Tensor], torch.Tensor]
    mlp: Callable[[torch.Tensor], torch.Tensor]
    ls2: Callable[[torch.Tensor], torch.Tensor]


@dataclass
class TowerParts:
    """The pieces of a causal CLIP text tower that prefix caching needs."""

    embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (ids [B,S], positions [S]) -> [B,S,W]
    layers: list[_Layer]
    heads: int
    final: Callable[[torch.Tensor], torch.Tensor]  # pooled [B,W] -> features [B,D]
    dtype: torch.dtype


def open_clip_parts(model: Any) -> TowerParts | None:
    """Parts of open_clip's built-in text tower, or None if it isn't the standard layout."""
    from open_clip.transformer import ResidualAttentionBlock

    tr = getattr(model, "transformer", None)
    if tr is None or not getattr(tr, "batch_first", True):
        return None
    blocks = list(tr.resblocks)
    if not blocks or not all(type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv") for b in blocks):
        return None
    width = model.token_embedding.weight.shape[1]
    cast = tr.get_cast_dtype()

    def qkv_of(attn: torch.nn.MultiheadAttention) -> Callable[[torch.Tensor], Any]:
        return lambda h: F.linear(h, attn.in_proj_weight, attn.in_proj_bias).split(width, dim=-1)

    def out_of(attn: torch.nn.MultiheadAttention) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda o: F.linear(o, attn.out_proj.weight, attn.out_proj.bias)

    layers = [_Layer(b.ln_1, qkv_of(b.attn), out_of(b.attn), b.ls_1, b.ln_2, b.mlp, b.ls_2) for b in blocks]
    proj = model.text_projection

    def final(x: torch.Tensor) -> torch.Tensor:
        x = model.ln_final(x)
        if proj is None:
            return x
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    return TowerParts(
        embed=lambda ids, pos: model.token_embedding(ids).to(cast) + model.positional_embedding[pos].to(cast),
        layers=layers, heads=blocks[0].attn.num_heads, final=final, dtype=cast,
    )


def hf_clip_parts(model: Any) -> TowerParts | None:
    """Parts of a transformers CLIPTextTransformer."""
    tm = model.text_model
    layers = []
    for layer in tm.encoder.layers:
        a = layer.self_attn
        layers.append(_Layer(
            layer.layer_norm1,
            (lambda a: lambda h: (a.q_proj(h), a.k_proj(h), a.v_proj(h)))(a),
            a.out_proj, _identity, layer.layer_norm2, layer.mlp, _identity,
        ))

    def final(x: torch.Tensor) -> torch.Tensor:
        return model.text_projection(tm.final_layer_norm(x))

    return TowerParts(
        embed=lambda ids, pos: tm.embeddings(input_ids=ids, position_ids=pos.unsqueeze(0)),
        layers=layers, heads=model.config.text_config.num_attention_heads, final=final,
        dtype=next(tm.parameters()).dtype,
    )


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _attend(layer: _Layer, x: torch.Tensor, heads: int, past: tuple[torch.Tensor, torch.Tensor] | None,
            keep: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """One residual block over x [B, S, W], attending to cached keys/values [1, H, P, hd]."""
    b, s, w = x.shape
    hd = w // heads
    q, k, v = layer.qkv(layer.ln1(x))
    q, k, v = (t.reshape(b, s, heads, hd).transpose(1, 2) for t in (q, k, v))
    kept = (k, v) if keep else None
    causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
    if past is not None:
        pk, pv = past
        p = pk.shape[2]
        k = torch.cat([pk.expand(b, -1, -1, -1), k], dim=2)
        v = torch.cat([pv.expand(b, -1, -1, -1), v], dim=2)
        mask = torch.cat([torch.ones(s, p, dtype=torch.bool, device=x.device), causal], dim=1)
    else:
        mask = causal
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    o = o.transpose(1, 2).reshape(b, s, w)
    x = x + layer.ls1(layer.out(o))
    x = x + layer.ls2(layer.mlp(layer.ln2(x)))
    return x, kept


class PrefixScorer:
    """Encodes ``prefix + ", " + phrase`` for many phrases with the prefix computed once."""

    def __init__(self, encoder: Any, parts: TowerParts) -> None:
        self.encoder = encoder
        self.parts = parts
        tok = encoder.tokenizer
        self.tok = tok
        self.comma = tok.encode(",")
        self._ids: dict[str, tuple[int, ...]] = {}
        self._lock = threading.Lock()
        self.fallbacks = 0  # phrases that needed a full encode (for tests and benchmarks)

    def phrase_ids(self, phrase: str) -> tuple[int, ...]:
        """Token ids of a phrase, computed once per phrase and kept."""
        ids = self._ids.get(phrase)
        if ids is None:
            ids = tuple(self.tok.encode(phrase))
            self._ids[phrase] = ids
        return ids

    def _boundary_safe(self, prefix: str, prefix_ids: list[int]) -> bool:
        probe = self.tok.encode(prefix + SEP + "a")
        return probe == prefix_ids + self.comma + self.tok.encode("a")

    def encode(self, prefix: str, phrases: Sequence[str]) -> np.ndarray:
        """Normalised features [N, D] of ``prefix + ", " + phrase`` for each phrase."""
        enc = self.encoder
        n = len(phrases)
        out = np.empty((n, enc.embed_dim), np.float32)
        if n == 0:
            return out
        ctx = enc.context_length
        prefix_ids = self.tok.encode(prefix)
        safe_prefix = self._boundary_safe(prefix, prefix_ids) and prefix.isascii()
        head = prefix_ids[: ctx - 2]
        room = ctx - 2 - len(head)
        suffixes: list[list[int] | None] = []
        for phrase in phrases:
            ids = list(self.phrase_ids(phrase))
            if safe_prefix and phrase.isascii():
                ok = True
            else:
                ok = self.tok.encode(prefix + SEP + phrase) == prefix_ids + self.comma + ids
            suffixes.append((self.comma + ids)[:room] + [self.tok.eot_id] if ok else None)

        fast = [i for i, s in enumerate(suffixes) if s is not None]
        slow = [i for i, s in enumerate(suffixes) if s is None]
        if fast:
            out[fast] = self._encode_suffixes([self.tok.sot_id, *head], [suffixes[i] for i in fast])  # type: ignore[misc]
        if slow:
            self.fallbacks += len(slow)
            out[slow] = enc.encode_texts([prefix + SEP + phrases[i] for i in slow])
        return out

    def _encode_suffixes(self, prefix_run: list[int], suffixes: list[list[int]]) -> np.ndarray:
        enc = self.encoder
        parts = self.parts
        dev = enc.device
        p = len(prefix_run)
        lengths = np.fromiter((len(s) for s in suffixes), np.int64, count=len(suffixes))
        order = np.argsort(lengths, kind="stable")
        feats = np.empty((len(suffixes), enc.embed_dim), np.float32)
        with enc._lock, torch.inference_mode():
            x = parts.embed(torch.tensor([prefix_run], device=dev), torch.arange(p, device=dev))
            cache: list[tuple[torch.Tensor, torch.Tensor]] = []
            for layer in parts.layers:
                x, kv = _attend(layer, x, parts.heads, None, keep=True)
                assert kv is not None
                cache.append(kv)
            enc.tokens_encoded += p
            budget = enc.token_budget
            start = 0
            while start < len(order):
                # Sorted by length, so the batch's width is its last member's.
                stop = start + 1
                while stop < len(order) and stop - start < 1024 and \
                        (stop - start + 1) * (int(lengths[order[stop]]) + p // 4) <= budget:
                    stop += 1
                idx = order[start:stop]
                width = int(lengths[idx[-1]])
                ids = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, : lengths[i]] = torch.as_tensor(suffixes[i])
                ids = ids.to(dev)
                h = parts.embed(ids, torch.arange(p, p + width, device=dev))
                for layer, kv in zip(parts.layers, cache):
                    h, _ = _attend(layer, h, parts.heads, kv, keep=False)
                eot_pos = torch.as_tensor(lengths[idx] - 1, device=dev)
                pooled = h[torch.arange(len(idx), device=dev), eot_pos]
                f = F.normalize(parts.final(pooled).float(), dim=-1)
                feats[idx] = f.cpu().numpy()
                enc.tokens_encoded += ids.numel()
                start = stop
        return feats
