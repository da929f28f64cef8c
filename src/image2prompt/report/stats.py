"""The statistics of the report: which phrases separate groups, and which co-occur.

**Separation** (stated for the reader in :data:`METHOD`): the difference in the share of images
with the phrase among their top phrases (else in their prompt), a group against every other image;
a 95% percentile bootstrap interval (a share's resample is a binomial draw, done in closed form);
a z-test or Fisher's exact p-value; Benjamini-Hochberg over every (group, phrase) tested. Phrases
in fewer than ``min_images`` images are not tested: they cannot reach significance and only
dilute the correction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .collect import Collection

__all__ = ["Cooccurrence", "Separation", "benjamini_hochberg", "cooccurrence", "separating_phrases"]

METHOD = ("Effect size: the difference in the share of images with the phrase among their top phrases "
          "(this group minus all other images), with a 95% percentile bootstrap interval (2000 resamples "
          "of the images). p-values: two-sided two-proportion z-test, or Fisher's exact test where a cell of the "
          "2x2 table expects fewer than 5 images. False discoveries: Benjamini-Hochberg "
          "at q = 0.05 over every phrase and group tested. Phrases in fewer than {min_images} images are not tested. "
          "Each image keeps only its top K phrases per category, so a phrase that is often among one group's top "
          "phrases pushes others out of them: their shares fall a little in that group too.")


@dataclass
class Separation:
    group: str
    category: str
    text: str
    share: float  # in the group
    share_rest: float  # in every other image
    effect: float  # share - share_rest
    low: float  # 95% bootstrap interval of the effect
    high: float
    p: float
    q: float  # Benjamini-Hochberg adjusted p-value
    significant: bool
    hypothesis: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Adjusted p-values (q-values) of the Benjamini-Hochberg step-up procedure."""
    p = np.asarray(p, np.float64)
    n = p.size
    if n == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


_erfc = np.frompyfunc(math.erfc, 1, 1)


def fisher_exact(c1: int, n1: int, c2: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test of the 2x2 table [[c1, n1-c1], [c2, n2-c2]]: the
    probability, given the margins, of a table at most as likely as this one."""
    k, n = c1 + c2, n1 + n2

    def logp(x: int) -> float:  # hypergeometric: x of the k images with the phrase fall in the group
        return (math.lgamma(k + 1) - math.lgamma(x + 1) - math.lgamma(k - x + 1)
                + math.lgamma(n - k + 1) - math.lgamma(n1 - x + 1) - math.lgamma(n - k - n1 + x + 1)
                - (math.lgamma(n + 1) - math.lgamma(n1 + 1) - math.lgamma(n - n1 + 1)))

    lo, hi = max(0, k - n2), min(k, n1)
    observed = logp(c1)
    total = sum(math.exp(lp) for lp in map(logp, range(lo, hi + 1)) if lp <= observed + 1e-7)
    return min(1.0, total)


def two_proportion_p(c1: np.ndarray, n1: int, c2: np.ndarray, n2: int) -> np.ndarray:
    """The two-sided z-test where every cell of the 2x2 table expects at least 5 images, Fisher's exact
    test elsewhere (where the normal approximation makes rare phrases look far too significant)."""
    pooled = (c1 + c2) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, np.abs(c1 / n1 - c2 / n2) / se, 0.0)
    p = np.asarray(_erfc(z / math.sqrt(2)), dtype=np.float64)
    k, n = c1 + c2, n1 + n2
    expected = np.minimum.reduce([k * n1 / n, k * n2 / n, (n - k) * n1 / n, (n - k) * n2 / n])
    for i in np.flatnonzero(expected < 5):
        p[i] = fisher_exact(int(c1[i]), n1, int(c2[i]), n2)
    return p


def separating_phrases(col: Collection, *, q: float = 0.05, min_images: int = 5, resamples: int = 2000,
                       seed: int = 0) -> list[Separation]:
    """Every tested (group, phrase) with its effect, interval and q-value, most significant first.
    With two groups only the first is tested against the second (the other is its mirror)."""
    sizes = col.scored_groups  # shares are over the images whose top phrases are known
    groups = sorted((g for g in sizes if sizes[g]), key=lambda g: -sizes[g])
    if len(groups) < 2:
        return []
    tested = groups[:1] if len(groups) == 2 else groups
    total = col.scored
    keys = [k for k, s in col.phrases.items() if s.images("top") >= min_images]
    if not keys:
        return []
    counts = np.array([[col.phrases[k].top.get(g, 0) for g in tested] for k in keys], np.float64)  # [P, G]
    every = np.array([col.phrases[k].images("top") for k in keys], np.float64)
    rows: list[tuple[int, int, float, float]] = []  # (phrase, group, share in it, share in the rest)
    ps: list[np.ndarray] = []
    for j, g in enumerate(tested):
        n1, n2 = sizes[g], total - sizes[g]
        if n1 == 0 or n2 == 0:
            continue
        c1, c2 = counts[:, j], every - counts[:, j]
        ps.append(two_proportion_p(c1, n1, c2, n2))
        rows += [(i, j, c1[i] / n1, c2[i] / n2) for i in range(len(keys))]
    if not rows:
        return []
    p = np.concatenate(ps)
    qv = benjamini_hochberg(p)
    rng = np.random.default_rng(seed)
    out = []
    for (i, j, s1, s2), pv, qq in zip(rows, p, qv):
        g = tested[j]
        n1, n2 = sizes[g], total - sizes[g]
        low = high = float("nan")
        if qq <= q or abs(s1 - s2) >= 0.05:
            boot = rng.binomial(n1, s1, resamples) / n1 - rng.binomial(n2, s2, resamples) / n2
            low, high = float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))
        stats = col.phrases[keys[i]]
        out.append(Separation(g, stats.category, stats.text, float(s1), float(s2), float(s1 - s2), low, high,
                              float(pv), float(qq), bool(qq <= q), stats.hypothesis))
    out.sort(key=lambda s: (s.q, -abs(s.effect)))
    return out


@dataclass
class Cooccurrence:
    labels: list[str]  # the most frequent prompt phrases
    counts: np.ndarray  # [M, M] images whose prompt has both (diagonal: each alone)
    images: int

    def pairs(self, limit: int = 20, min_lift: float = 1.0) -> list[dict[str, Any]]:
        """The pairs seen together more often than chance (lift above ``min_lift``), the most often
        first, with their lift (observed / expected if independent)."""
        m = len(self.labels)
        out = []
        for a in range(m):
            for b in range(a + 1, m):
                both = int(self.counts[a, b])
                expected = self.counts[a, a] * self.counts[b, b] / max(1, self.images)
                if both == 0 or both / expected <= min_lift + 1e-9:  # as often as chance, give or take rounding
                    continue
                out.append({"a": self.labels[a], "b": self.labels[b], "images": both, "lift": both / expected,
                            "jaccard": both / (self.counts[a, a] + self.counts[b, b] - both)})
        out.sort(key=lambda r: (-r["images"], -r["lift"]))
        return out[:limit]


def cooccurrence(col: Collection, top: int = 25, chunk: int = 65536) -> Cooccurrence:
    """Co-occurrence in prompts of the ``top`` phrases that are in the most prompts."""
    ids = np.frombuffer(col.prompt_ids, np.int32)
    freq = np.bincount(ids, minlength=len(col.id_keys))
    chosen = [int(i) for i in np.argsort(-freq, kind="stable")[:top] if freq[i] > 0]
    n = len(col.prompt_ends)
    counts = np.zeros((len(chosen), len(chosen)), np.float64)
    if chosen:
        ends = np.frombuffer(col.prompt_ends, np.int64)
        column = np.full(len(col.id_keys), -1, np.int64)
        column[chosen] = np.arange(len(chosen))
        for first in range(0, n, chunk):  # a chunk of images at a time: memory stays bounded
            last = min(n, first + chunk)
            start = int(ends[first - 1]) if first else 0
            lengths = np.diff(ends[first:last], prepend=start)
            rows = np.repeat(np.arange(last - first), lengths)
            k = column[ids[start:int(ends[last - 1])]]
            x = np.zeros((last - first, len(chosen)), np.float32)
            x[rows[k >= 0], k[k >= 0]] = 1.0
            counts += x.T @ x
    return Cooccurrence([col.id_keys[i][1] for i in chosen], counts, n)
