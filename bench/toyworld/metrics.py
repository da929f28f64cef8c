"""Quality figures on the toy world: factor recall and precision, intervals, AUC, zero-shot accuracy.

numpy only (the zero-shot helper takes an already loaded Interrogator).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .vocab import classify, factor_of
from .world import (
    ARTISTS,
    BACKGROUNDS,
    COLOURS,
    COUNTS,
    LIGHTINGS,
    MEDIUMS,
    MOVEMENTS,
    PLACEMENT_WORDS,
    SHAPES,
    STYLE_FACTORS,
    SUBJECT_FACTORS,
    TEXTURES,
    Scene,
)

#: The style factors whose recall the lab reports (movement too, where the scene has one).
RECALL_FACTORS = STYLE_FACTORS


@dataclass
class PromptScore:
    """One prompt's phrases judged against its scene."""

    added: int  # phrases the mode added (the caption is not counted)
    true: int  # of those, phrases naming one of the scene's factors
    false: int  # world factor phrases that are wrong for this scene
    distractors: int  # phrases that describe nothing the world has
    found: dict[str, bool]  # style factor -> whether a phrase for it is in the prompt
    subject_leaks: int  # phrases that name the scene's subject (colour, shape, background)

    @property
    def precision(self) -> float | None:
        return self.true / self.added if self.added else None

    @property
    def recall(self) -> float | None:
        return float(np.mean(list(self.found.values()))) if self.found else None


def score_phrases(texts: Iterable[str], scene: Scene) -> PromptScore:
    texts = [t for t in texts]
    kinds = [classify(t, scene) for t in texts]
    truth = scene.style_factors()
    found = {f: False for f in truth}
    leaks = 0
    for t, k in zip(texts, kinds):
        hit = factor_of(t)
        if hit and k == "true":
            if hit[0] in found:
                found[hit[0]] = True
            else:
                leaks += 1
    return PromptScore(len(texts), kinds.count("true"), kinds.count("false"), kinds.count("distractor"),
                       found, leaks)


def bootstrap(values: Sequence[float], stat: Callable[[np.ndarray], float] = np.mean, n: int = 2000,
              seed: int = 0) -> tuple[float, float, float]:
    """The statistic and its 95% percentile bootstrap interval over the items."""
    v = np.asarray([x for x in values if x is not None and not np.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n, v.size))
    stats = np.array([stat(v[i]) for i in idx])
    return float(stat(v)), float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def paired_ratio(num: Sequence[float], den: Sequence[float], n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """mean(num) / mean(den) over paired items, with a 95% bootstrap interval."""
    a, b = np.asarray(num, np.float64), np.asarray(den, np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n, a.size))
    r = a[idx].mean(1) / b[idx].mean(1)
    return float(a.mean() / b.mean()), float(np.percentile(r, 2.5)), float(np.percentile(r, 97.5))


def auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(a positive scores above a negative), ties counted half (the Mann-Whitney AUC)."""
    p, q = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if not p.size or not q.size:
        return float("nan")
    greater = (p[:, None] > q[None, :]).sum() + 0.5 * (p[:, None] == q[None, :]).sum()
    return float(greater / (p.size * q.size))


def auc_interval(positive: Sequence[float], negative: Sequence[float], n: int = 1000,
                 seed: int = 0) -> tuple[float, float, float]:
    p, q = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    rng = np.random.default_rng(seed)
    stats = [auc(p[rng.integers(0, p.size, p.size)], q[rng.integers(0, q.size, q.size)]) for _ in range(n)]
    return auc(p, q), float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


#: The zero-shot classes per factor: value -> the text it is scored with.
def zero_shot_classes() -> dict[str, dict[str, str]]:
    return {
        "shape": {s: p for s, p in SHAPES.items()},
        "colour": {c: f"{c} shapes" for c in COLOURS},
        "count": {w: f"{w} shapes" for w in COUNTS.values()},
        "placement": {p: f"shapes {w}" for p, w in PLACEMENT_WORDS.items()},
        "background": {b: f"on a {b} background" for b in BACKGROUNDS},
        "texture": {t: ps[0] for t, ps in TEXTURES.items()},
        "medium": {m: ps[0] for m, ps in MEDIUMS.items()},
        "lighting": {m: ps[0] for m, ps in LIGHTINGS.items()},
        "artist": {a: f"by {a}" for a in ARTISTS},
        "movement": {m: ps[0] for m, ps in MOVEMENTS.items()},
    }


def zero_shot(features: Sequence[np.ndarray], scenes: Sequence[Scene], encode_texts: Callable[[list[str]], np.ndarray],
              ) -> dict[str, dict[str, Any]]:
    """Per factor: accuracy of picking the true value among the factor's values by text similarity,
    over the scenes that have the factor, with a bootstrap interval and chance (1 / number of values)."""
    out: dict[str, dict[str, Any]] = {}
    img = np.stack(features)
    for factor, classes in zero_shot_classes().items():
        values = list(classes)
        text = encode_texts([classes[v] for v in values])
        pred = (img @ text.T).argmax(1)
        hits = []
        for s, p in zip(scenes, pred):
            truth = s.factors().get(factor)
            if truth is not None:
                hits.append(float(values[p] == truth))
        acc, lo, hi = bootstrap(hits)
        out[factor] = {"accuracy": acc, "low": lo, "high": hi, "chance": 1 / len(values), "n": len(hits),
                       "kind": "style" if factor in STYLE_FACTORS else "subject"}
    return out


assert set(zero_shot_classes()) == set(SUBJECT_FACTORS + STYLE_FACTORS)
