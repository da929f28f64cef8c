"""Synthetic batch records with a known structure, for the report's tests and its scale benchmark.

Each image gets, per category, a top-K list drawn from that category's phrases: every phrase
has a base rate, the same in every group, except the planted ones, whose rate differs by
group. Scores are drawn around a per-phrase mean. The records have the shape ``batch
--store-scores K`` writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

CATEGORIES = ("artists", "flavors", "mediums", "movements", "trendings")


def vocabulary(per_category: int) -> dict[str, list[str]]:
    return {c: [f"{c[:-1]} phrase {i}" if c != "artists" else f"by Artist {i}" for i in range(per_category)]
            for c in CATEGORIES}


def records(n: int, groups: Mapping[str, float] | None = None, *, per_category: int = 200, k: int = 10,
            planted: Mapping[str, Mapping[str, float]] | None = None, seed: int = 0,
            prompt_phrases: int = 12) -> Iterator[dict[str, Any]]:
    """``n`` records; ``groups`` maps a folder name to its share of the images; ``planted`` maps a
    phrase (of the flavors category) to its rate (chance of being in an image's top K) per group."""
    rng = np.random.default_rng(seed)
    groups = dict(groups or {"all": 1.0})
    names, weights = list(groups), np.array(list(groups.values()), float)
    vocab = vocabulary(per_category)
    rates = {c: rng.uniform(0.01, 0.3, per_category) for c in CATEGORIES}
    means = {c: rng.uniform(-0.05, 0.3, per_category) for c in CATEGORIES}
    planted = dict(planted or {})
    for i in range(n):
        group = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        top: dict[str, list[dict[str, Any]]] = {}
        for c in CATEGORIES:
            chance = rng.random(per_category) < rates[c]
            room = k - len(planted) if c == "flavors" else k  # planted phrases never push a null one out
            picked = list(rng.permutation(np.flatnonzero(chance))[:room])  # any of the hits, not the first ones
            phrases = [vocab[c][j] for j in picked]
            scores = [float(means[c][j] + rng.normal(0, 0.03)) for j in picked]
            if c == "flavors":
                for text, by_group in planted.items():
                    if rng.random() < by_group.get(group, 0.0):
                        phrases.insert(0, text)
                        scores.insert(0, float(0.32 + rng.normal(0, 0.02)))
            top[c] = [{"text": t, "category": c, "score": s, "hypothesis": c == "artists", "margin": None,
                       "weight": 1.0} for t, s in sorted(zip(phrases, scores), key=lambda ts: -ts[1])]
        chosen = [p for c in CATEGORIES for p in top[c][:2]][:prompt_phrases]
        prompt = "a picture, " + ", ".join(p["text"] for p in chosen)
        strength = float(rng.normal(6, 2))
        yield {"source": f"{group}/img{i:06d}.png", "content_hash": f"{i:064x}", "fingerprint": "f" * 16,
               "ok": True, "result": {
                   "prompt": prompt, "mode": "fast", "caption": "a picture", "similarity": 0.3,
                   "clip_model": "synthetic", "caption_model": None, "caption_truncated": False,
                   "phrases": chosen, "source": f"{group}/img{i:06d}.png", "token_count": 40,
                   "match_strength": strength, "weak_match": strength < 4.0, "negative": None, "chunks": None,
                   "fingerprint": "f" * 16, "version": "0.1.0",
                   "trace": {"steps": [], "picked": None, "top": top}}}


def write_jsonl(path: str | Path, rows: Iterator[dict[str, Any]]) -> Path:
    p = Path(path)
    with open(p, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return p
