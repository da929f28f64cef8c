"""Confidence figures: how far a phrase or an image's best match stands out (numpy only).

The rules and their reasons are in docs/confidence.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

#: ``weak_z`` is stated for a table of this many phrases: the reference's ~100k flavors.
WEAK_Z_TABLE = 100_000


def category_stats(scores: np.ndarray) -> tuple[float, float]:
    """Median and standard deviation of a category's scores for one image (an empty table has
    no phrase to judge: 0 and a tiny spread, without numpy's empty-slice warnings)."""
    if scores.size == 0:
        return 0.0, 1e-6
    return float(np.median(scores)), float(scores.std()) or 1e-6


def pooled_spread(tables: Sequence[np.ndarray]) -> float | None:
    """The standard deviation of every score of ``tables`` pooled (in float64): the unit the
    relevance floor measures a phrase's support in. None when the tables hold no score."""
    if not any(t.size for t in tables):
        return None
    return float(np.concatenate([t.astype(np.float64) for t in tables]).std()) or 1e-6


def match_strength(scores: np.ndarray) -> float | None:
    """z-score of the best score within its table: how far the best flavor stands out
    (None for a table of fewer than two phrases)."""
    if scores.size < 2:
        return None
    return float((scores.max() - scores.mean()) / (scores.std() or 1e-6))


@lru_cache(maxsize=256)
def chance_max_z(n: int) -> float:
    """The expected largest of ``n`` independent standard normal scores: how high the best
    of a table scores by chance alone. It grows like sqrt(2 ln n): about 2.6 for 120
    phrases, 3.2 for 1,000 and 4.4 for 100,000 (numerical integration, exact for normals)."""
    if n < 2:
        return 0.0
    x = np.linspace(-8.0, 12.0, 8001)
    pdf = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x]))
    y = x * n * pdf * cdf ** (n - 1)
    return float(((y[1:] + y[:-1]) * np.diff(x)).sum() / 2)  # the trapezoid rule (numpy 1.x has no trapezoid)


def weak_threshold(weak_z: float, n: int) -> float:
    """The match strength below which a table of ``n`` phrases counts as a weak match.

    ``weak_z`` is the threshold for a 100k-phrase table; for other sizes it moves with what the best phrase would
    score by chance (:func:`chance_max_z`), so the flag asks the same question at every size: does the best phrase
    stand out more than chance would make it? A fixed z cannot: 4.0 is below chance for 100k phrases and far above it
    for a few hundred, where it would flag almost every image (docs/confidence.md)."""
    return float(weak_z) + chance_max_z(int(n)) - chance_max_z(WEAK_Z_TABLE)


def weak_match(scores: np.ndarray, weak_z: float) -> tuple[float | None, bool]:
    """``(match_strength, weak)`` for one image's scores over a table (see :func:`weak_threshold`)."""
    strength = match_strength(scores)
    return strength, strength is not None and strength < weak_threshold(weak_z, scores.size)


def emphasis_weight(z: float) -> float:
    """A1111 emphasis from a phrase's z-score within its category (docs/confidence.md):
    1.0 at z=2, +0.05 per standard deviation, clamped to [0.9, 1.3], in steps of 0.05."""
    w = 1.0 + 0.05 * (z - 2.0)
    return round(min(1.3, max(0.9, w)) * 20) / 20
