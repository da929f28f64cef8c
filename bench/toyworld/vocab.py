"""The toy world's vocabulary pack, and what each of its phrases means in the world.

The pack has the reference's layout (``artists.txt`` of bare names, ``flavors.txt``,
``mediums.txt``, ``movements.txt``, ``negative.txt``; the 18-site ``trendings``
table is added by the loader), so every mode runs on it unchanged. Each list
mixes the world's factor phrases with distractors: invented artist names that
never appear, mediums and movements the world never renders, generic quality
tags (seen in training captions at random, so uninformative), and phrases about
things the world never shows.

:func:`classify` says what a phrase means for one scene: ``true`` (it names one of
the scene's factors), ``false`` (a factor phrase of the world, wrong for this
scene) or ``distractor`` (it describes nothing the world has).

    python -m bench.toyworld.vocab            # rewrite bench/toyworld/vocab/
"""

from __future__ import annotations

import sys
from pathlib import Path

from .world import (
    ARTISTS,
    BACKGROUNDS,
    COLOURS,
    DISTRACTOR_ARTISTS,
    DISTRACTOR_MEDIUMS,
    DISTRACTOR_MOVEMENTS,
    GENERIC_TAGS,
    LIGHTINGS,
    MEDIUMS,
    MOVEMENTS,
    NEGATIVE_TERMS,
    SHAPES,
    TEXTURES,
    UNRELATED_PHRASES,
    Scene,
)

PACK_DIR = Path(__file__).resolve().parent / "vocab"

#: Flavor-like phrases the world never renders and never captions.
DISTRACTOR_FLAVORS: tuple[str, ...] = (
    "low poly", "isometric", "bokeh", "glitch art", "halftone", "chrome", "neon glow", "lens flare",
    "volumetric light", "depth of field", "hdr", "matte painting", "ray tracing", "god rays",
    "photorealistic", "anime", "cartoon", "comic book", "sketchbook", "graffiti",
)


def _factor_phrases() -> dict[str, tuple[str, str]]:
    """phrase -> (factor, value) for every phrase that names a factor of the world."""
    out: dict[str, tuple[str, str]] = {}
    for factor, table in (("texture", TEXTURES), ("medium", MEDIUMS), ("lighting", LIGHTINGS),
                          ("movement", MOVEMENTS)):
        for value, phrases in table.items():
            for p in phrases:
                out[p] = (factor, value)
    for name in ARTISTS:
        out[f"by {name}"] = ("artist", name)
        out[f"inspired by {name}"] = ("artist", name)
    for c in COLOURS:
        out[c] = ("colour", c)
    for shape, plural in SHAPES.items():
        out[plural] = ("shape", shape)
    for b in BACKGROUNDS:
        out[f"{b} background"] = ("background", b)
    return out


FACTOR_PHRASES = _factor_phrases()


def lists() -> dict[str, list[str]]:
    """The pack's lists, as written to disk (artists as bare names)."""
    return {
        "artists": list(ARTISTS) + list(DISTRACTOR_ARTISTS),
        "mediums": [p for ps in MEDIUMS.values() for p in ps] + list(DISTRACTOR_MEDIUMS),
        "movements": [p for ps in MOVEMENTS.values() for p in ps] + list(DISTRACTOR_MOVEMENTS),
        "flavors": ([p for ps in TEXTURES.values() for p in ps] + [p for ps in LIGHTINGS.values() for p in ps]
                    + list(COLOURS) + list(SHAPES.values()) + [f"{b} background" for b in BACKGROUNDS]
                    + list(GENERIC_TAGS) + list(DISTRACTOR_FLAVORS) + list(UNRELATED_PHRASES)),
        "negative": list(NEGATIVE_TERMS),
    }


def write_pack(folder: Path = PACK_DIR) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, items in lists().items():
        (folder / f"{name}.txt").write_text("\n".join(items) + "\n", encoding="utf-8")
    return folder


def classify(text: str, scene: Scene) -> str:
    """``true``, ``false`` or ``distractor``: what ``text`` (one prompt phrase) is for ``scene``."""
    hit = FACTOR_PHRASES.get(text.strip())
    if hit is None:
        return "distractor"
    factor, value = hit
    return "true" if scene.factors().get(factor) == value else "false"


def factor_of(text: str) -> tuple[str, str] | None:
    return FACTOR_PHRASES.get(text.strip())


def main() -> int:
    print(write_pack(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
