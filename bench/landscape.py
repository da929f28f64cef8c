"""How well one chain step's gains predict the next: the structure turbo mode relies on.

Runs best mode's greedy chain with every phrase scored at every step (the same
random-weight models, images, captions and vocabulary sample as ``modes.py``)
and, from the second step on, compares each phrase's gain at this step with its
gain at the step before (gain: the extended prompt's similarity minus the
prompt's). It reports:

- the Pearson correlation of the two steps' gains (median and range over steps);
- how often best mode's pick is among the ``--shortlist`` highest stale gains,
  taking each phrase's gain at the step before, or the mean of its gains at
  all steps before (turbo's ranking); the top of the ranking is what turbo's
  first lazy round scores;
- how often gains shrank (the lazy upper bound held), median over steps.

Where gains carry over from step to step, turbo finds best mode's picks cheaply;
where they do not, the chain is close to a maximum over noise and turbo's
result depends on how many phrases it scores. See docs/benchmarks.md.

    python bench/landscape.py --sizes b32,l14,b32-bow,l14-bow --images 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CAPTIONS,
    REPO_ROOT,
    SIZE_NAMES,
    emit_report,
    ensure_models,
    make_images,
    modes_sample,
    offline_env,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="b32,l14,b32-bow,l14-bow", help="comma-separated: " + ", ".join(SIZE_NAMES))
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--candidates", type=int, default=256, help="the chain's pool")
    p.add_argument("--shortlist", type=int, default=48, help="turbo's lazy round size")
    p.add_argument("--vocab-size", type=int, default=2000, help="flavors sampled")
    p.add_argument("--artists", type=int, default=200, help="artists sampled")
    p.add_argument("--out", default=str(REPO_ROOT / ".bench-out"), help="work folder (models, caches)")
    p.add_argument("--markdown-out", default=None)
    return p.parse_args(argv)


def measure(size: str, model_dir: Path, vocab_dir: Path, cache_dir: Path, args: argparse.Namespace) -> list:
    import numpy as np

    from image2prompt import Config, Interrogator, SearchSettings
    from image2prompt.cache import EmbeddingCache
    from image2prompt.models.clip import load_clip
    from image2prompt.modes import SearchContext
    from image2prompt.search.chain import ChainState
    from image2prompt.vocab import load_folder_pack

    enc = load_clip(f"local-dir:{model_dir}", device="cpu", precision="fp32")
    ci = Interrogator(enc, None, load_folder_pack(vocab_dir), EmbeddingCache(cache_dir / size / "fp32", download=False),
                      Config(caption_model=None))
    ci.prepare()
    ctx = SearchContext(ci, SearchSettings(candidates=args.candidates))
    phrase_ids = ci.indexes[0].token_ids()
    corr, in_short, in_short_mean, shrank = [], [], [], []
    for i, img in enumerate(make_images(args.images)):
        caption = CAPTIONS[i % len(CAPTIONS)]
        feats = ci.encode([img], generate_captions=False)[0]
        pool = [p.text for p in ctx.top_merged(feats, args.candidates)]
        start_sim = float(ci.similarity(feats, [caption])[0])
        state = ChainState(pool, ctx.at_limit, start=caption, start_similarity=start_sim)
        previous: dict[str, float] = {}
        total: dict[str, float] = {}
        count: dict[str, int] = {}
        while not state.done:
            (prefix, rest), = state.requests()
            scores = enc.encode_extensions_many([(prefix, rest)], phrase_ids=phrase_ids)[0] @ feats[0]
            gains = scores - state.beams[0].sim
            common = [k for k, p in enumerate(rest) if p in previous]
            if len(common) > 2:
                old, new = np.array([previous[rest[k]] for k in common]), gains[common]
                if old.std() > 0 and new.std() > 0:  # at the token window every extension can score the same
                    corr.append(float(np.corrcoef(old, new)[0, 1]))
                pick = int(np.argmax(new))
                in_short.append(int((old > old[pick]).sum()) < args.shortlist)
                mean = np.array([total[rest[k]] / count[rest[k]] for k in common])
                in_short_mean.append(int((mean > mean[pick]).sum()) < args.shortlist)
                shrank.append(float((new <= old).mean()))
            previous = dict(zip(rest, gains.tolist()))
            for p, g in previous.items():
                total[p] = total.get(p, 0.0) + g
                count[p] = count.get(p, 0) + 1
            state.advance([scores])
    c = np.array(corr)
    return [size, len(in_short), f"{np.median(c):.2f} ({c.min():.2f} to {c.max():.2f})",
            f"{100 * np.mean(in_short):.0f}%", f"{100 * np.mean(in_short_mean):.0f}%",
            f"{100 * np.median(shrank):.0f}%"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    offline_env()
    out = Path(args.out)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    models = ensure_models(out / "models", sizes)
    vocab_dir, counts, cache_root = modes_sample(out, args.vocab_size, args.artists)
    rows = []
    for size in sizes:
        rows.append(measure(size, models[size], vocab_dir, cache_root, args))
        print(f"  {rows[-1]}", flush=True)
    emit_report("cpu", [f"vocabulary: {counts}; images: {args.images}; chain pool: {args.candidates}, "
                        "every phrase scored at every step"],
                ["size", "steps compared", "gain correlation, step to step: median (range)",
                 f"best's pick among the {args.shortlist} highest: last gains",
                 "mean gains (turbo's ranking)", "gains that shrank (median)"],
                rows, args.markdown_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
