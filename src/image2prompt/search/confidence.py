"""Confidence figures: how far a phrase or an image's best match stands out (numpy only).

The rules and their reasons are in docs/confidence.md.
"""

from __future__ import annotations

import numpy as np


def category_stats(scores: np.ndarray) -> tuple[float, float]:
    """Median and standard deviation of a category's scores for one image."""
    return float(np.median(scores)), float(scores.std()) or 1e-6


def match_strength(scores: np.ndarray) -> float | None:
    """z-score of the best score within its table: how far the best flavor stands out
    (None for a table of fewer than two phrases)."""
    if scores.size < 2:
        return None
    return float((scores.max() - scores.mean()) / (scores.std() or 1e-6))


def emphasis_weight(z: float) -> float:
    """A1111 emphasis from a phrase's z-score within its category (docs/confidence.md):
    1.0 at z=2, +0.05 per standard deviation, clamped to [0.9, 1.3], in steps of 0.05."""
    w = 1.0 + 0.05 * (z - 2.0)
    return round(min(1.3, max(0.9, w)) * 20) / 20
