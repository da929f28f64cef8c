"""Batch planning for text encodes (numpy only; shared by the full and the prefix-cached paths)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

#: A batch may pad at most this share of its token positions (sequences are sorted by length,
#: so this only splits batches whose lengths spread widely).
MAX_PADDING = 0.25


def plan_batches(widths: np.ndarray, rows_for: Callable[[int], int]) -> list[tuple[int, int]]:
    """Split length-sorted sequences into [start, stop) batches that fit the memory budget
    (``rows_for(width)`` rows of that width) and waste at most MAX_PADDING on padding."""
    out: list[tuple[int, int]] = []
    fits = functools.cache(rows_for)  # asked once per width
    n, start = len(widths), 0
    while start < n:
        stop, real = start + 1, int(widths[start])
        while stop < n:
            w = int(widths[stop])
            count = stop - start + 1
            if count > fits(w) or count * w > (real + w) * (1 + MAX_PADDING):
                break
            real += w
            stop += 1
        out.append((start, stop))
        start = stop
    return out
