"""Exact top-k of a score vector, ties broken by table order; similarities scored in chunks."""

from __future__ import annotations

import numpy as np

DEFAULT_CHUNK_ROWS = 16384


def _select(scores: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (score desc, index asc) of the given pairs, in that order."""
    if k < len(scores):
        # Everything strictly above the k-th score is in; ties at the boundary are
        # resolved by index, so chunking can never change the answer.
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= kth
        scores, index = scores[keep], index[keep]
    order = np.lexsort((index, -scores))[:k]
    return scores[order], index[order]


def top_k_of_scores(scores: np.ndarray, k: int, *, largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of a precomputed score vector, ties broken by index (table order)."""
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    k = max(0, min(int(k), scores.shape[0]))
    if k == 0:
        return np.empty(0, np.float32), np.empty(0, np.int64)
    sign = np.float32(1.0 if largest else -1.0)
    best_s, best_i = _select(scores * sign, np.arange(scores.shape[0], dtype=np.int64), k)
    return best_s * sign, best_i


def similarities(query: np.ndarray, embeds: np.ndarray, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
    """Dot product of ``query`` with every row, as float32."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    out = np.empty(embeds.shape[0], np.float32)
    for start in range(0, embeds.shape[0], max(1, chunk_rows)):
        stop = min(start + chunk_rows, embeds.shape[0])
        out[start:stop] = embeds[start:stop].astype(np.float32, copy=False) @ q
    return out
