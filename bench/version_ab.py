"""Best mode per image for whichever image2prompt is importable: run it once per version, alternately.

For A/B timing of two versions of the code on the same model, vocabulary, images and
captions: put the other version first on the path with ``PYTHONPATH=OTHER/src`` (a git
worktree of the old commit) and alternate the two runs. Prints one JSON line: the code
version, seconds per image, text-tower tokens per image and the prompts, so identical
prompts can be checked too. Works with the Config-only API before the stage split and
with SearchSettings after it.

    git worktree add /tmp/old 93893ef
    PYTHONPATH=/tmp/old/src python bench/version_ab.py --model-dir M --vocab-dir V --cache-dir /tmp/c-old
    python bench/version_ab.py --model-dir M --vocab-dir V --cache-dir /tmp/c-new
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.conftest (the images)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CAPTIONS = ["a photo of a dog", "a painting of a woman", "a red square", "a blue circle",
            "an oil painting of a tree", "a man standing in the street"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True, help="an open_clip local-dir: folder")
    p.add_argument("--vocab-dir", required=True, help="a vocabulary folder")
    p.add_argument("--cache-dir", required=True, help="embedding cache (one per version: file names changed)")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--candidates", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import image2prompt
    from image2prompt import Config, Interrogator
    from image2prompt.cache import EmbeddingCache
    from image2prompt.models.clip import load_clip
    from image2prompt.vocab import load_folder_pack
    from tests.conftest import make_images

    enc = load_clip(f"local-dir:{args.model_dir}", device="cpu")
    pack = load_folder_pack(args.vocab_dir)
    cache = EmbeddingCache(args.cache_dir, download=False)
    staged = hasattr(image2prompt, "SearchSettings")
    if staged:
        extra = {"floor": None} if "floor" in getattr(image2prompt.SearchSettings, "__dataclass_fields__", {}) else {}
        settings = image2prompt.SearchSettings(mode="best", candidates=args.candidates, **extra)  # floor off in both
        ci = Interrogator(enc, None, pack, cache, Config(caption_model=None))

        def run(img, cap):  # type: ignore[no-untyped-def]
            return ci.interrogate(img, caption=cap, settings=settings)
    else:
        ci = Interrogator(enc, None, pack, cache, Config(caption_model=None, candidates=args.candidates))

        def run(img, cap):  # type: ignore[no-untyped-def]
            return ci.interrogate(img, "best", caption=cap)
    ci.prepare()
    images = make_images(args.images + 1, size=224)
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(args.images + 1)]
    run(images[0], captions[0])  # warm-up
    t0, tok0 = time.perf_counter(), enc.tokens_encoded
    prompts = [run(im, c).prompt for im, c in zip(images[1:], captions[1:])]
    secs = (time.perf_counter() - t0) / args.images
    print(json.dumps({"code": str(Path(image2prompt.__file__).parent), "staged_api": staged,
                      "s_per_image": round(secs, 3), "tokens_per_image": (enc.tokens_encoded - tok0) / args.images,
                      "prompts": prompts}, ensure_ascii=False))


if __name__ == "__main__":
    main()
