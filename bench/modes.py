"""Benchmark our own search variants against our best mode: turbo, beam 2/4, and precision.

For each model size (random-weight open_clip models at ViT-B/32 and ViT-L/14
tower sizes, optionally with a bag-of-words text tower: ``b32-bow``, ``l14-bow``),
the same images, captions and vocabulary sample, it reports per variant: seconds
per image, text-tower token positions per image, the mean CLIP similarity of the
final prompts, their ratio to best mode's with a 95% bootstrap interval over the
images, and on how many images the variant did at least as well; for reduced
precision (bf16 on CPU, fp16 on CUDA) also how often the chosen prompt differs
from fp32's.

Random weights give valid speed figures and a valid equivalence check, but the
similarity ratios describe these random models' score landscapes, not a real
CLIP's. ``--clip NAME --image-dir DIR`` runs the same comparison on a real model and real
images (captions stay the fixed ones: both variants start from the same caption).
See docs/benchmarks.md.

    python bench/modes.py --sizes b32,l14 --images 20 --candidates 2048
    python bench/modes.py --sizes b32 --images 20 --candidates 512 --variants best,turbo --precision-check none
    python bench/modes.py --sizes b32-bow --images 20 --candidates 512 --variants best,turbo --precision-check none
    python bench/modes.py --sizes l14 --clip ViT-L-14/openai --image-dir photos/ --variants best,turbo
    python bench/modes.py --sizes b32 --images 20 --image-offset 60 --candidates 512 --variants best,turbo \
        --turbo-variant keep128:turbo_pool=512,keep=128 --precision-check none
    python bench/modes.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CAPTIONS,
    REPO_ROOT,
    emit_report,
    ensure_models,
    make_images,
    modes_sample,
    offline_env,
)

VARIANTS = {
    "best": dict(mode="best"),
    "turbo": dict(mode="turbo"),
    "best beam 2": dict(mode="best", beam=2),
    "best beam 4": dict(mode="best", beam=4),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="b32,l14",
                   help="comma-separated: b32, l14, or b32-bow, l14-bow (the same random models with a "
                        "bag-of-words text tower, whose landscape has the structure turbo relies on)")
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--candidates", type=int, default=2048, help="best mode's candidate pool")
    p.add_argument("--turbo-pool", type=int, default=None,
                   help="turbo's pool (default: half of --candidates, as turbo's 1,024 is half of best's 2,048)")
    p.add_argument("--turbo-variant", action="append", default=[], metavar="NAME:KEY=N,...",
                   help="also run turbo with these SearchSettings fields, e.g. 'keep128:turbo_pool=512,keep=128' "
                        "(repeatable; each is added to --variants)")
    p.add_argument("--image-offset", type=int, default=0,
                   help="skip this many synthetic images first: a set held out from the default one, for tuning")
    p.add_argument("--vocab-size", type=int, default=None, help="flavors sampled (default: all)")
    p.add_argument("--artists", type=int, default=None, help="artists sampled (default: all)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    p.add_argument("--clip", default=None, metavar="NAME",
                   help="a real CLIP model (any image2prompt name, e.g. ViT-L-14/openai) instead of the "
                        "random-weight ones; --sizes then only names the row; downloads are allowed")
    p.add_argument("--image-dir", default=None, metavar="DIR",
                   help="interrogate the first --images images of DIR instead of synthetic ones")
    p.add_argument("--precision-check", default="auto", help="auto (bf16 on CPU, fp16 on CUDA), none, or a dtype")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(REPO_ROOT / ".bench-out"), help="work folder (models, caches)")
    p.add_argument("--markdown-out", default=None)
    p.add_argument("--throughput", action="store_true",
                   help="instead: images/s of fast and classic, one image at a time vs interrogate_batch")
    p.add_argument("--batch-size", type=int, default=16, help="batch size for --throughput")
    p.add_argument("--quick", action="store_true", help="smoke run: b32, 2 images, 64 candidates, 300 flavors")
    a = p.parse_args(argv)
    for spec in a.turbo_variant:
        name = spec.partition(":")[0]
        VARIANTS[name] = dict(mode="turbo", **_turbo_fields(p, spec))
        a.variants += "," + name
    if a.quick:
        a.sizes, a.images, a.candidates, a.vocab_size, a.artists = "b32", 2, 64, 300, 50
    a.turbo_pool = a.turbo_pool or max(1, a.candidates // 2)
    return a


def _turbo_fields(p: argparse.ArgumentParser, spec: str) -> dict[str, int]:
    """The SearchSettings fields of a ``--turbo-variant NAME:KEY=N,...``; a malformed one stops the parser."""
    from dataclasses import fields

    from image2prompt import SearchSettings

    known = {f.name for f in fields(SearchSettings)}
    out = {}
    for item in filter(None, spec.partition(":")[2].split(",")):
        key, _, value = item.partition("=")
        if key not in known or not value.lstrip("-").isdigit():
            p.error(f"--turbo-variant {spec!r}: {item!r} is not KEY=N with KEY a SearchSettings field")
        out[key] = int(value)
    return out


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def load_images(args: argparse.Namespace) -> tuple[list, list[str]]:
    """The images (``--image-offset`` on, ``--images`` of them) and the fixed caption of each."""
    first, last = args.image_offset, args.image_offset + args.images
    if args.image_dir:
        from image2prompt.io import expand_sources, load_image

        images = [load_image(src) for src in list(expand_sources([args.image_dir]))[first:last]]
    else:
        images = make_images(last)[first:]
    return images, [CAPTIONS[i % len(CAPTIONS)] for i in range(first, first + len(images))]


def ratio_with_interval(sims, base_sims, resamples: int = 10_000, seed: int = 0) -> str:
    """mean(sims) / mean(base_sims), with a 95% paired bootstrap interval over the images.

    On random-weight models a variant's chain often ends in a different prompt than
    best mode's, and the per-image ratios spread widely (from 0.85 to 1.17 over 8
    images of a tuning run), so a mean over 20 images is uncertain by a few percent;
    the interval says how much.
    """
    import numpy as np

    sims, base_sims = np.asarray(sims, dtype=np.float64), np.asarray(base_sims, dtype=np.float64)
    ratio = sims.mean() / base_sims.mean()
    if len(sims) < 2:
        return f"{ratio:.4f}"
    idx = np.random.default_rng(seed).integers(0, len(sims), size=(resamples, len(sims)))
    boot = sims[idx].mean(axis=1) / base_sims[idx].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return f"{ratio:.4f} ({lo:.3f} to {hi:.3f})"


def at_least(sims, base_sims, tol: float = 1e-6) -> int:
    """On how many images a variant scored at least best mode's similarity.

    The tolerance absorbs float differences between scoring paths, so that the same
    prompt counts as a tie (e.g. a bf16 prompt rescored with the fp32 model).
    """
    import numpy as np

    return int((np.asarray(sims) >= np.asarray(base_sims) - tol).sum())


def run_size(size: str, model: str, vocab_dir: Path, cache_dir: Path, args: argparse.Namespace) -> list[list]:
    import numpy as np

    from image2prompt import Config, Interrogator, SearchSettings
    from image2prompt.cache import EmbeddingCache
    from image2prompt.models.clip import load_clip
    from image2prompt.vocab import load_folder_pack

    pack = load_folder_pack(vocab_dir)
    images, captions = load_images(args)
    enc = load_clip(model, device=args.device, precision="fp32")
    cache = EmbeddingCache(cache_dir / size / "fp32", download=False)
    # floor off: turbo against best is measured on the reference's search (with the floor on, the
    # pool is small and turbo gives best's prompts at best's speed; docs/benchmarks.md)
    base = SearchSettings.reference(candidates=args.candidates, turbo_pool=args.turbo_pool)

    def make() -> Interrogator:
        return Interrogator(enc, None, pack, cache, Config(caption_model=None))

    ci = make()
    ci.prepare()  # tables are built (or read) before anything is timed
    rows, results = [], {}
    for name in args.variants.split(","):
        settings = base.replace(**VARIANTS[name])
        ci.interrogate(images[0], caption=captions[0], settings=settings)  # warm-up
        t0, tok0 = time.perf_counter(), enc.tokens_encoded
        _sync(args.device)
        out = [ci.interrogate(img, caption=c, settings=settings) for img, c in zip(images, captions)]
        _sync(args.device)
        secs = (time.perf_counter() - t0) / len(images)
        toks = (enc.tokens_encoded - tok0) / len(images)
        results[name] = (secs, toks, out)
        print(f"  {size} {name}: {secs:.3f} s/image", flush=True)
    base_s, _, base = results.get("best", next(iter(results.values())))
    base_sims = np.array([r.similarity for r in base])
    for name, (secs, toks, out) in results.items():
        sims = np.array([r.similarity for r in out])
        same = sum(a.prompt == b.prompt for a, b in zip(out, base))
        rows.append([size, name, "fp32", f"{secs:.3f}", f"{toks:,.0f}", f"{sims.mean():.4f}",
                     ratio_with_interval(sims, base_sims), f"{at_least(sims, base_sims)}/{len(out)}",
                     f"{base_s / secs:.2f}x", f"{same}/{len(out)}"])

    precision = args.precision_check
    if precision == "auto":
        precision = "fp16" if args.device.startswith("cuda") else "bf16"
    if precision != "none":
        low = load_clip(model, device=args.device, precision=precision)
        ci = Interrogator(low, None, pack, EmbeddingCache(cache_dir / size / precision, download=False),
                          Config(caption_model=None))
        ci.prepare()
        ci.interrogate(images[0], "best", caption=captions[0], settings=base)
        t0, tok0 = time.perf_counter(), low.tokens_encoded
        out = [ci.interrogate(img, "best", caption=c, settings=base) for img, c in zip(images, captions)]
        _sync(args.device)
        secs = (time.perf_counter() - t0) / len(images)
        # Score the low-precision prompts with the fp32 model, so similarities are comparable.
        f32 = make()
        sims = []
        for img, r in zip(images, out):
            feats = [f[0] for f in f32.image_features([img])]
            sims.append(float(f32.similarity(feats, [r.prompt])[0]))
        low_sims = np.array(sims)
        same = sum(a.prompt == b.prompt for a, b in zip(out, base))
        rows.append([size, "best", precision, f"{secs:.3f}", f"{(low.tokens_encoded - tok0) / len(images):,.0f}",
                     f"{low_sims.mean():.4f}", ratio_with_interval(low_sims, base_sims),
                     f"{at_least(low_sims, base_sims)}/{len(out)}", f"{base_s / secs:.2f}x",
                     f"{same}/{len(out)}"])
    return rows


def run_throughput(size: str, model: str, vocab_dir: Path, cache_dir: Path, args: argparse.Namespace) -> list[list]:
    """fast and classic: images/s one image at a time vs batched through interrogate_batch."""
    from image2prompt import Config, Interrogator
    from image2prompt.cache import EmbeddingCache
    from image2prompt.models.clip import load_clip
    from image2prompt.vocab import load_folder_pack

    images, captions = load_images(args)
    enc = load_clip(model, device=args.device, precision="fp32")
    ci = Interrogator(enc, None, load_folder_pack(vocab_dir), EmbeddingCache(cache_dir / size / "fp32", download=False),
                      Config(caption_model=None, image_batch_size=args.batch_size))
    ci.prepare()
    rows = []
    for mode in ("fast", "classic"):
        ci.interrogate(images[0], mode, caption=captions[0])  # warm-up
        t0 = time.perf_counter()
        single = [ci.interrogate(im, mode, caption=c).prompt for im, c in zip(images, captions)]
        _sync(args.device)
        t1 = time.perf_counter()
        batched = []
        for start in range(0, len(images), args.batch_size):
            batched += [r.prompt for r in ci.interrogate_batch(images[start:start + args.batch_size], mode,
                                                               captions=captions[start:start + args.batch_size])]
        _sync(args.device)
        t2 = time.perf_counter()
        assert batched == single, "batched prompts differ from one-at-a-time prompts"
        n = len(images)
        rows.append([size, mode, f"{n / (t1 - t0):.1f}", f"{n / (t2 - t1):.1f}", args.batch_size, "yes"])
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.clip:
        offline_env()
    out = Path(args.out)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if args.clip:
        models = {sizes[0]: args.clip}
        sizes = sizes[:1]
    else:
        models = {s: f"local-dir:{d}" for s, d in ensure_models(out / "models", sizes).items()}
    vocab_dir, counts, cache_root = modes_sample(out, args.vocab_size, args.artists)
    rows: list[list] = []
    if args.throughput:
        for size in sizes:
            rows += run_throughput(size, models[size], vocab_dir, cache_root, args)
        emit_report(args.device, [f"vocabulary: {counts}; images: {args.images}"],
                    ["size", "mode", "images/s one at a time", "images/s batched", "batch size",
                     "same prompts"], rows, args.markdown_out)
        return 0
    for size in sizes:
        rows += run_size(size, models[size], vocab_dir, cache_root, args)
    headers = ["size", "variant", "precision", "s/image", "tokens/image", "mean similarity",
               "vs best (95% CI)", "images >= best", "speed vs best", "same prompt as best"]
    emit_report(args.device, [
        f"vocabulary: {counts} (flavors sampled from clip-interrogator's lists); "
        f"images: {args.images}; candidates: {args.candidates} (turbo's pool: "
        f"{args.turbo_pool}); image offset: {args.image_offset}",
    ], headers, rows, args.markdown_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
