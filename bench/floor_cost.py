"""What the relevance floor costs (or saves) each mode's search, on the quality lab's model.

    python bench/floor_cost.py                          # fast and classic, 200 images, 5 rounds
    python bench/floor_cost.py --modes best,fast --rounds 3 --floors off,0.75,1.0

The settings alternate round by round over the same images (so a noisy machine
slows them alike) and each keeps its fastest round; seconds are the search alone,
every table already embedded (bench/_common.timed_search). Figures and what they
mean are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality
from _common import offline_env, timed_search

TUNING_SEED = 781  # neither training's nor the reported quality figures' images


def measure(modes: tuple[str, ...], floors: tuple[float | None, ...], images: int, rounds: int) -> dict:
    from bench.toyworld.world import sample_scenes
    from image2prompt import SearchSettings

    offline_env()
    it = quality.load(quality.MODEL_DIR)
    feats = quality.encode(it, sample_scenes(images, TUNING_SEED))
    best: dict[tuple[str, float | None], float] = {}
    for _ in range(rounds):
        for mode in modes:
            for floor in floors:
                _, sec = timed_search(it, feats, SearchSettings(mode=mode, floor=floor))
                best[(mode, floor)] = min(best.get((mode, floor), float("inf")), sec)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="fast,classic")
    ap.add_argument("--floors", default="off,0.75", help="comma-separated: off or numbers")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    floors = quality.parse_floors(ap, args.floors)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = sorted(set(modes) - set(quality.ALL_MODES))
    if unknown:
        ap.error(f"unknown mode(s): {', '.join(unknown)}")
    best = measure(modes, floors, args.images, args.rounds)
    print(f"{args.images} images, fastest of {args.rounds} alternating rounds, search only:\n")
    print("| mode | " + " | ".join(quality.floor_label(f).strip(" ()") for f in floors) + " |")
    print("|---|" + "---|" * len(floors))
    for mode in modes:
        print(f"| {mode} | " + " | ".join(f"{best[(mode, f)] * 1000:.2f} ms" for f in floors) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
