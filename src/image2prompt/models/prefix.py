"""Prefix-cached scoring of "prefix, phrase" for many phrases at once.

Every chain step scores ``current prompt + ", " + phrase`` for up to 2,048
phrases. Under the causal mask of CLIP text towers the prefix's hidden states
do not depend on what follows, so the prefix is run once, keeping each layer's
keys and values, and only each phrase's own tokens plus the end token are run
against that cache. Pooling is at the end token, so the result is the same
computation as a full encode, reordered (differences are float rounding).

Exactness conditions, each checked rather than assumed:

* Tokenisation: ids(prefix + ", " + phrase) must equal head + bridge +
  ids(phrase), where head is a start of ids(prefix) and bridge the tokens
  between it and the phrase. The CLIP BPE splits words on whitespace and
  character class before merging, so the phrase side is context-free for ASCII
  text. On the prefix side the comma usually stands alone (bridge = ids(",")),
  but after punctuation it merges with it: "( ( brown skin ) )" + ", " ends in
  the token ")," and not in ")" + ",". So head and bridge are read, once per
  step, off the tokenizer's own output for ``prefix + ", a"``: head is what
  that output shares with ids(prefix), and bridge the rest before "a". Only
  head is cached; bridge runs with each phrase. Non-ASCII prefixes or phrases
  (where ftfy's clean-up could act across the boundary) are verified one by one
  with the full tokenizer. Any failure falls back to a full encode for that
  phrase.
* Truncation: a full sequence longer than the window keeps the first
  ``context - 2`` text tokens and then the end token; the suffix is cut the
  same way.

Phrase token ids come from the caller (``phrase_ids``: the ids ``embed_labels``
returned when the table was embedded, or the cache file's) or, for phrases it
lacks, from the tokenizer; either way the suffixes are kept in a bounded LRU.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..syntax import SEPARATOR as SEP
from .batching import plan_batches

#: Phrases whose suffix ids are kept (least recently used dropped first): at a few
#: hundred bytes each, about 20 MB, and more than a chain step's candidates.
SUFFIX_CACHE_SIZE = 65_536


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


def project(x: torch.Tensor, proj: Any) -> torch.Tensor:
    """An open_clip text tower's projection: none, an ``nn.Linear``, or a matrix."""
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def open_clip_parts(model: Any) -> TowerParts | None:
    """Parts of an open_clip text tower, or None if it isn't the standard layout.

    ``model`` is the tower: a ``CLIP`` model (its text tower is built in) or the
    ``TextTransformer`` of a ``CustomTextCLIP`` (``model.text``); both name the parts alike.
    """
    from open_clip.transformer import ResidualAttentionBlock

    if not all(hasattr(model, a) for a in ("token_embedding", "positional_embedding", "ln_final",
                                            "text_projection")):
        return None
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

    return TowerParts(
        embed=lambda ids, pos: model.token_embedding(ids).to(cast) + model.positional_embedding[pos].to(cast),
        layers=[_Layer(b.ln_1, qkv_of(b.attn), b.attn.out_proj, b.ls_1, b.ln_2, b.mlp, b.ls_2) for b in blocks],
        heads=blocks[0].attn.num_heads, final=lambda x: project(model.ln_final(x), model.text_projection),
    )


def hf_clip_parts(model: Any) -> TowerParts | None:
    """Parts of a transformers CLIPTextTransformer."""
    tm = model.text_model

    def qkv_of(a: Any) -> Callable[[torch.Tensor], Any]:
        return lambda h: (a.q_proj(h), a.k_proj(h), a.v_proj(h))

    same = torch.nn.Identity()
    return TowerParts(
        embed=lambda ids, pos: tm.embeddings(input_ids=ids, position_ids=pos if pos.dim() == 2 else pos.unsqueeze(0)),
        layers=[_Layer(layer.layer_norm1, qkv_of(layer.self_attn), layer.self_attn.out_proj, same, layer.layer_norm2,
                       layer.mlp, same) for layer in tm.encoder.layers],
        heads=model.config.text_config.num_attention_heads,
        final=lambda x: model.text_projection(tm.final_layer_norm(x)),
    )


def _block(layer: _Layer, x: torch.Tensor, heads: int, mask: torch.Tensor,
           past: tuple[torch.Tensor, torch.Tensor] | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One residual block over x [B, S, W], attending to ``past`` keys/values [B, H, P, hd]
    (the cached prefix) and then to x itself under ``mask``. Returns x and x's own keys/values."""
    b, s, w = x.shape
    hd = w // heads
    q, k, v = layer.qkv(layer.ln1(x))
    q, k, v = (t.reshape(b, s, heads, hd).transpose(1, 2) for t in (q, k, v))
    keys, values = (k, v) if past is None else (torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2))
    o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    x = x + layer.ls1(layer.out(o.transpose(1, 2).reshape(b, s, w)))
    x = x + layer.ls2(layer.mlp(layer.ln2(x)))
    return x, k, v


class PrefixScorer:
    """Encodes ``prefix + ", " + phrase`` for many phrases with the prefix computed once."""

    def __init__(self, encoder: Any, parts: TowerParts, cache_size: int = SUFFIX_CACHE_SIZE) -> None:
        self.encoder = encoder
        self.parts = parts
        self.tok = tok = encoder.tokenizer
        self.comma = tok.encode(",")
        self._a = tok.encode("a")
        # phrase -> (", " + phrase + end-token ids, whether the phrase tokenises the same after ", "),
        # least recently used first; at most cache_size entries.
        self.cache_size = max(1, int(cache_size))
        self._suffix: OrderedDict[str, tuple[np.ndarray, bool]] = OrderedDict()
        self._suffix_lock = threading.Lock()
        self.fallbacks = 0  # phrases that needed a full encode (for tests and benchmarks)
        self.peak_rows = 0  # largest suffix batch so far (for tests of the memory bound)

    def suffix(self, phrase: str, ids: Sequence[int] | None = None) -> tuple[np.ndarray, bool]:
        """(", " + phrase + end ids, whether the phrase tokenises alike after ", ").

        ``ids`` are the phrase's token ids when the caller has them; else it is tokenized.
        """
        with self._suffix_lock:
            got = self._suffix.get(phrase)
            if got is not None:
                self._suffix.move_to_end(phrase)
                return got
        bpe = list(ids) if ids is not None else self.tok.encode(phrase)
        # ASCII phrases tokenise the same after ", " (the BPE splits words at spaces and
        # character classes first); others are checked once, in a neutral context.
        free = phrase.isascii() or self.tok.encode("a" + SEP + phrase) == self._a + self.comma + bpe
        got = np.asarray(self.comma + bpe + [self.tok.eot_id], dtype=np.int64), free
        with self._suffix_lock:
            self._suffix[phrase] = got
            self._suffix.move_to_end(phrase)
            while len(self._suffix) > self.cache_size:
                self._suffix.popitem(last=False)
        return got

    def _split(self, prefix: str, prefix_ids: list[int]) -> tuple[list[int], list[int]] | None:
        """(head, bridge): ids(prefix + ", " + phrase) = head + bridge + ids(phrase), head a
        start of ids(prefix); None if the tokenizer's output for ``prefix + ", a"`` has no such split."""
        probe = self.tok.encode(prefix + SEP + "a")
        if probe[len(probe) - len(self._a):] != self._a:
            return None
        probe = probe[: len(probe) - len(self._a)]
        k = 0
        for x, y in zip(probe, prefix_ids):
            if x != y:
                break
            k += 1
        return prefix_ids[:k], probe[k:]

    def encode_many(self, requests: Sequence[tuple[str, Sequence[str]]], *,
                    phrase_ids: Mapping[str, Sequence[int]] | None = None) -> list[np.ndarray]:
        """Normalised features [N, D] of ``prefix + ", " + phrase`` for each ``(prefix, phrases)`` request;
        the phrases of all requests share encoder batches. ``phrase_ids``: phrase -> token ids without
        start/end tokens, where the caller has them; other phrases are tokenized here."""
        known = phrase_ids if phrase_ids is not None else {}
        enc = self.encoder
        ctx = enc.context_length
        eot = self.tok.eot_id
        outs = [np.empty((len(phrases), enc.embed_dim), np.float32) for _, phrases in requests]
        prefix_runs: list[list[int]] = []
        rows: list[tuple[int, np.ndarray]] = []  # (group, suffix ids)
        targets: list[tuple[int, int]] = []  # (request, phrase index) of each row
        slow: list[tuple[int, int, str]] = []
        for r, (prefix, phrases) in enumerate(requests):
            prefix_ids = self.tok.encode(prefix)
            split = self._split(prefix, prefix_ids)
            whole_head, bridge = split or (prefix_ids, self.comma)
            retie = np.asarray(bridge, dtype=np.int64) if bridge != self.comma else None
            ascii_prefix = prefix.isascii()
            head = whole_head[: ctx - 2]
            room = ctx - 2 - len(head)
            group = len(prefix_runs)
            prefix_runs.append([self.tok.sot_id, *head])
            for i, phrase in enumerate(phrases):
                suffix, free = self.suffix(phrase, known.get(phrase))
                if retie is not None:  # the comma merged with the prefix's end: run the merged tokens here
                    suffix = np.concatenate([retie, suffix[len(self.comma):]])
                ok = split is not None and free and (ascii_prefix or phrase.isascii() or
                                                     self.tok.encode(prefix + SEP + phrase)
                                                     == whole_head + suffix[:-1].tolist())
                if not ok:
                    slow.append((r, i, prefix + SEP + phrase))
                    continue
                if len(suffix) - 1 > room:  # the tokenizer keeps the first ctx-2 text tokens, then the end
                    suffix = np.append(suffix[:room], eot)
                rows.append((group, suffix))
                targets.append((r, i))
        if rows:
            feats = self._encode_rows(prefix_runs, rows)
            for (r, i), f in zip(targets, feats):
                outs[r][i] = f
        if slow:
            self.fallbacks += len(slow)
            feats = enc.encode_texts([text for _, _, text in slow])
            for (r, i, _), f in zip(slow, feats):
                outs[r][i] = f
        return outs

    def _encode_rows(self, prefix_runs: list[list[int]], rows: list[tuple[int, np.ndarray]]) -> np.ndarray:
        enc = self.encoder
        parts = self.parts
        dev = enc.device
        plen = torch.tensor([len(p) for p in prefix_runs], device=dev)
        pmax = int(plen.max())
        lengths = np.fromiter((len(s) for _, s in rows), np.int64, count=len(rows))
        order = np.argsort(lengths, kind="stable")
        feats = np.empty((len(rows), enc.embed_dim), np.float32)
        with enc._lock, torch.inference_mode():
            # Prefixes are right-padded: under the causal mask padding cannot reach real positions,
            # and suffix rows mask the padded columns out.
            pids = torch.zeros((len(prefix_runs), pmax), dtype=torch.long)
            for i, run in enumerate(prefix_runs):
                pids[i, : len(run)] = torch.as_tensor(run)
            x = parts.embed(pids.to(dev), torch.arange(pmax, device=dev))
            causal_prefix = torch.ones(pmax, pmax, dtype=torch.bool, device=dev).tril()
            cache: list[tuple[torch.Tensor, torch.Tensor]] = []
            for layer in parts.layers:
                x, k, v = _block(layer, x, parts.heads, causal_prefix)
                cache.append((k, v))
            enc.tokens_encoded += int(plen.sum())
            groups = np.fromiter((g for g, _ in rows), np.int64, count=len(rows))
            for start, stop in plan_batches(lengths[order], lambda w: enc.rows_for(w, pmax)):
                self.peak_rows = max(self.peak_rows, stop - start)
                idx = order[start:stop]
                width = int(lengths[idx[-1]])
                mat = np.zeros((len(idx), width), dtype=np.int64)
                for row, i in enumerate(idx):
                    suffix = rows[i][1]
                    mat[row, : len(suffix)] = suffix
                ids = torch.from_numpy(mat).to(dev)
                grp = torch.from_numpy(groups[idx]).to(dev)
                # Padding after a row's end token can run past the window; it is never read.
                pos = (plen[grp].unsqueeze(1) + torch.arange(width, device=dev)).clamp(max=enc.context_length - 1)
                h = parts.embed(ids, pos)
                prefix_ok = torch.arange(pmax, device=dev).unsqueeze(0) < plen[grp].unsqueeze(1)  # [B, P]
                causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril()
                mask = torch.cat([prefix_ok.unsqueeze(1).expand(-1, width, -1),
                                  causal.unsqueeze(0).expand(len(idx), -1, -1)], dim=2).unsqueeze(1)
                for layer, (pk, pv) in zip(parts.layers, cache):
                    h, _, _ = _block(layer, h, parts.heads, mask, past=(pk[grp], pv[grp]))
                eot_pos = torch.as_tensor(lengths[idx] - 1, device=dev)
                pooled = h[torch.arange(len(idx), device=dev), eot_pos]
                f = F.normalize(parts.final(pooled).float(), dim=-1)
                feats[idx] = f.cpu().numpy()
                enc.tokens_encoded += ids.numel()
        return feats
