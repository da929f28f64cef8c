"""Golden prompts: what every mode gave before the pipeline was split into stages, with the
reference's behaviour (``SearchSettings.reference``: no relevance floor), and what the floor
gives on top (the ``-floor`` cases).

``python -m tests.support.golden`` rebuilds ``tests/data/golden_prompts.json`` from
the tiny random-weight models (the same ones the tests build). Rebuild it only for an
intended change of output, and say why in the commit.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden_prompts.json"
N_IMAGES = 6
CAPTIONS = ["a photo of a dog", "a painting of a woman sitting on a table", "a red square",
            "a blue circle on a green background", "an oil painting of a tree", "a man standing in the street"]

#: (name, mode, search settings, paired negative)
CASES: list[tuple[str, str, dict[str, Any], bool]] = [
    ("best", "best", {}, False),
    ("turbo", "turbo", {}, False),
    ("classic", "classic", {}, False),
    ("fast", "fast", {}, False),
    ("negative", "negative", {}, False),
    ("style", "style", {}, False),
    ("best-beam2", "best", {"beam": 2}, False),
    ("best-40-tokens", "best", {"max_tokens": 40}, False),
    ("fast-30-tokens", "fast", {"max_tokens": 30}, False),
    ("turbo-keep3", "turbo", {"keep": 3}, False),
    ("best-with-negative", "best", {}, True),
    ("fast-150-chunked", "fast", {"max_tokens": 150, "chunks": True}, False),
    ("best-floor", "best", {"floor": 1.0}, False),
    ("fast-floor", "fast", {"floor": 1.0}, False),
    ("classic-floor", "classic", {"floor": 1.0}, False),
    ("style-floor", "style", {"floor": 1.0}, False),
]


def result_record(r: Any) -> dict[str, Any]:
    return {
        "prompt": r.prompt,
        "similarity": None if r.similarity is None else round(float(r.similarity), 5),
        "phrases": [p.text for p in r.phrases],
        "negative": r.negative.prompt if r.negative is not None else None,
        "chunks": r.chunks,
    }


def run_cases(clip_dir: Path, vocab_dir: Path, cache_dir: Path) -> dict[str, list[dict[str, Any]]]:
    from image2prompt import Config, Interrogator, SearchSettings
    from image2prompt.cache import EmbeddingCache
    from image2prompt.models.clip import load_clip
    from image2prompt.vocab import load_folder_pack
    from tests.conftest import make_images

    images = make_images(N_IMAGES)
    ci = Interrogator(load_clip(str(clip_dir), device="cpu"), None, load_folder_pack(vocab_dir),
                      EmbeddingCache(cache_dir, download=False), Config(caption_model=None))
    out: dict[str, list[dict[str, Any]]] = {}
    for name, mode, search, negative in CASES:
        settings = SearchSettings.reference(mode=mode, negative=negative, **search)
        results = ci.interrogate_batch(images, captions=CAPTIONS, settings=settings)
        out[name] = [result_record(r) for r in results]
    return out


def build(models_dir: Path, vocab_dir: Path) -> dict[str, Any]:
    from tests.support import tiny_models

    clips = {"open_clip": tiny_models.make_open_clip_dir(models_dir / "tiny-open-clip"),
             "transformers": tiny_models.make_hf_clip_dir(models_dir / "tiny-hf-clip")}
    return {backend: run_cases(d, vocab_dir, models_dir / f"cache-{backend}") for backend, d in clips.items()}


def main() -> None:
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    from tests.conftest import SMALL_VOCAB

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        vocab = root / "vocab"
        vocab.mkdir()
        for name, lines in SMALL_VOCAB.items():
            (vocab / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        data = build(root, vocab)
    GOLDEN.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}", file=sys.stderr)


if __name__ == "__main__":
    main()
