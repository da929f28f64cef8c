"""Phrase tables embedded by one CLIP encoder, built lazily and cached (no torch import here)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import numpy as np

from .cache import EmbeddingCache
from .vocab import VocabularyPack
from .vocab.tables import PhraseTable

log = logging.getLogger(__name__)


class ProgressBar(Protocol):
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


#: progress(description, total) -> a bar; front ends pass one, the library default shows nothing.
ProgressFactory = Callable[[str, int], ProgressBar]


class TextEncoder(Protocol):
    """What the index needs from a CLIP encoder."""

    name: str
    cache_key: str
    embed_dim: int

    def embed_labels(self, labels: Sequence[str], *, progress: Callable[[int], None] | None = None
                     ) -> tuple[np.ndarray, list[list[int]]]:
        """Features [N, D] and each label's token ids (no start/end tokens, untruncated)."""


@dataclass(frozen=True)
class MergedView:
    """The fast/best candidate pool: merged categories, duplicates dropped (first category wins)."""

    labels: tuple[str, ...]
    categories: tuple[str, ...]
    rows: np.ndarray  # row of each label in the pack-wide embedding matrix


class VocabularyIndex:
    """Embeddings of every table of a pack for one encoder, in one fp16 matrix.

    Tables are embedded on first use (or read from the cache). Each table's token
    ids are kept too (:meth:`token_ids`), for the encoder's prefix-cached scoring.
    Safe to share across threads: building is guarded by a lock, reads are lock-free.
    """

    def __init__(self, pack: VocabularyPack, encoder: TextEncoder, cache: EmbeddingCache | None,
                 progress: ProgressFactory | None = None) -> None:
        self.pack = pack
        self.encoder = encoder
        self.cache = cache
        self.progress = progress
        self._lock = threading.Lock()
        self._embeds: dict[str, np.ndarray] = {}
        self._token_ids: dict[str, Sequence[int]] = {}
        self._token_ids_view: Mapping[str, Sequence[int]] = MappingProxyType(self._token_ids)
        self._merged: MergedView | None = None

    def embeds(self, category: str) -> np.ndarray:
        """float32 [N, D] embeddings of the category's labels, in table order.

        Stored as fp16 in the cache (the reference's format) and widened once here: scoring a 112k-label table from
        fp16 costs ~7x more on CPU, because numpy converts half floats without SIMD on every product.
        """
        got = self._embeds.get(category)
        if got is not None:
            return got
        with self._lock:
            if category not in self._embeds:
                self._embeds[category] = self._build(self.pack[category])
            return self._embeds[category]

    def token_ids(self) -> Mapping[str, Sequence[int]]:
        """label -> its token ids (no start/end tokens, untruncated), for every table built so far.

        A live read-only view: tables built later appear in it. Labels of cache files
        written without ids (the reference's) are missing; encoders tokenize those.
        Pass it to ``encode_extensions_many(..., phrase_ids=index.token_ids())``.
        """
        return self._token_ids_view

    def prepare(self, categories: Sequence[str] | None = None) -> None:
        for c in categories or self.pack.categories():
            self.embeds(c)

    def _build(self, table: PhraseTable) -> np.ndarray:
        enc = self.encoder
        quick_gelu = bool(getattr(enc, "quick_gelu_forced", False))  # see EmbeddingCache.load_table
        if self.cache is not None:
            cached = self.cache.load_table(enc.cache_key, table, dim=enc.embed_dim, quick_gelu=quick_gelu)
            if cached is not None:
                log.debug("table %s for %s read from cache", table.name, enc.name)
                if cached.token_ids is not None:
                    self._keep_token_ids(table.labels, cached.token_ids)
                return cached.embeds.astype(np.float32)
        log.info("embedding %d %s phrases with %s", len(table), table.name, enc.name)
        bar = self.progress(f"Embedding {table.name}", len(table)) if self.progress and len(table) else None
        try:
            feats, token_ids = enc.embed_labels(list(table.labels), progress=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        embeds = feats.astype(np.float16)  # rounded as stored, so a cache hit gives the same scores
        self._keep_token_ids(table.labels, token_ids)
        if self.cache is not None and len(table):
            self.cache.save(enc.cache_key, table, embeds, token_ids=token_ids, quick_gelu=quick_gelu)
        return embeds.astype(np.float32)

    def _keep_token_ids(self, labels: Sequence[str], ids: Sequence[Sequence[int]]) -> None:
        if len(ids) != len(labels):
            log.warning("%d token-id lists for %d labels; ignoring them", len(ids), len(labels))
            return
        for label, row in zip(labels, ids):
            self._token_ids.setdefault(label, row)

    # -- merged pool -------------------------------------------------------
    def merged(self) -> MergedView:
        """The fast/best pool: merged categories in order, later duplicates dropped.

        ``rows`` index the concatenation of the categories' tables, so merged
        scores are a gather of per-category scores: no second copy of the embeddings.
        """
        if self._merged is None:
            with self._lock:
                if self._merged is None:
                    first: dict[str, tuple[str, int]] = {}  # label -> (its first category, its row)
                    offset = 0
                    for c in self.pack.merged_categories():
                        table = self.pack[c]
                        for i, label in enumerate(table.labels):
                            first.setdefault(label, (c, offset + i))
                        offset += len(table)
                    self._merged = MergedView(tuple(first), tuple(c for c, _ in first.values()),
                                              np.asarray([row for _, row in first.values()], dtype=np.int64))
        return self._merged
