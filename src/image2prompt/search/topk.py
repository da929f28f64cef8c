"""Exact top-k of a score vector, ties broken by table order; similarities scored in chunks."""

from __future__ import annotations

import numpy as np

DEFAULT_CHUNK_ROWS = 16384


def top_k_of_scores(scores: np.ndarray, k: int, *, largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of a precomputed score vector, ties broken by index (table order)."""
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    k = max(0, min(int(k), scores.shape[0]))
    if k == 0:
        return np.empty(0, np.float32), np.empty(0, np.int64)
    sign = np.float32(1.0 if largest else -1.0)
    signed, index = scores * sign, np.arange(scores.shape[0], dtype=np.int64)
    if k < len(signed):  # everything at or above the k-th score; the ties at it are resolved by index below
        kth = np.partition(signed, len(signed) - k)[len(signed) - k]
        keep = signed >= kth
        signed, index = signed[keep], index[keep]
    order = np.lexsort((index, -signed))[:k]  # score desc, index asc
    return signed[order] * sign, index[order]


def similarities(query: np.ndarray, embeds: np.ndarray, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
    """Dot product of ``query`` with every row, as float32."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    out = np.empty(embeds.shape[0], np.float32)
    for start in range(0, embeds.shape[0], max(1, chunk_rows)):
        out[start:start + chunk_rows] = embeds[start:start + chunk_rows].astype(np.float32, copy=False) @ q
    return out
