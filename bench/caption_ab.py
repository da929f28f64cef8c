"""BLIP captioning on a CPU: image2prompt's loaded captioner against transformers' own modules.

image2prompt changes two things in a loaded BLIP (``models/captioners.py``): the decoder's
cross-attention is absorbed (``absorb_blip_cross_attention``) and the vision tower runs in
chunks (``chunk_blip_vision``). This times ``Captioner.caption`` on one batch with each
variant, alternating them in one process so that both see the same machine load, and counts
the page faults per batch. With ``--memory`` it instead measures each variant's peak RSS over
one batch, in a fresh process each. Variants:

- ``transformers``: both modules put back to transformers' classes;
- ``absorbed``: only the cross-attention absorbed;
- ``ours``: both, as ``load_captioner`` returns it.

    python bench/caption_ab.py                       # random BLIP at blip-base's sizes, 16 images
    python bench/caption_ab.py --memory
    python bench/caption_ab.py --variants transformers,absorbed --repeats 5

Random weights measure speed and memory, not caption quality (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, make_images, offline_env, peak_rss_mb

VARIANTS = ("transformers", "absorbed", "ours")


def load(model_dir: str, threads: int):
    import torch

    from image2prompt.models.captioners import load_captioner

    torch.set_num_threads(threads)
    return load_captioner(f"local-dir:{model_dir}", device="cpu", precision="fp32")


def set_variant(cap, variant: str) -> None:
    """Put the loaded captioner's modules into ``variant``'s classes."""
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

    from image2prompt.models import captioners as c

    for name, module in cap.model.named_modules():
        if isinstance(module, BlipTextSelfAttention) and name.endswith("crossattention.self"):
            module.__class__ = BlipTextSelfAttention if variant == "transformers" else c.AbsorbedBlipCrossAttention
        elif isinstance(module, BlipVisionModel):
            module.__class__ = c.ChunkedBlipVisionModel if variant == "ours" else BlipVisionModel


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def speed(args: argparse.Namespace, variants: list[str]) -> dict:
    cap = load(args.model, args.threads)
    images = make_images(args.images, size=256)
    cap.caption(images, batch_size=args.images)  # warm-up
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    page_faults: dict[str, list[int]] = {v: [] for v in variants}
    captions: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for v in variants:
            set_variant(cap, v)
            f0, t0 = faults(), time.perf_counter()
            captions[v] = cap.caption(images, batch_size=args.images)
            seconds[v].append((time.perf_counter() - t0) / args.images)
            page_faults[v].append(faults() - f0)
    return {v: {"median_s": statistics.median(seconds[v]), "min_s": min(seconds[v]),
                "faults_per_batch": statistics.median(page_faults[v]),
                "same_captions": captions[v] == captions[variants[0]]} for v in variants}


def memory_worker(args: argparse.Namespace) -> None:
    cap = load(args.model, args.threads)
    set_variant(cap, args.memory_worker)
    images = make_images(args.images, size=256)
    before = peak_rss_mb()  # VmHWM: ru_maxrss would carry the driver's peak across fork+exec
    cap.caption(images, batch_size=args.images)
    peak = peak_rss_mb()
    print(json.dumps({"peak_mib": peak, "growth_mib": peak - before}))


def memory(args: argparse.Namespace, variants: list[str]) -> dict:
    out = {}
    for v in variants:
        cmd = [sys.executable, __file__, "--model", args.model, "--images", str(args.images),
               "--threads", str(args.threads), "--memory-worker", v]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[v] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a BLIP folder (default: a random one at blip-base's sizes)")
    p.add_argument("--images", type=int, default=16, help="images in the batch")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--memory", action="store_true", help="peak RSS per variant instead of time")
    p.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    offline_env()
    if args.model is None:
        from memory import make_blip_base

        args.model = str(make_blip_base(REPO_ROOT / ".bench-out" / "models" / "blip-base-size"))
    if args.memory_worker:
        memory_worker(args)
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    result = memory(args, variants) if args.memory else speed(args, variants)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.images} images, "
          f"{args.threads} thread(s), {'' if args.memory else f'{args.repeats} alternations, '}model {args.model}")
    for v, r in result.items():
        print(v, json.dumps({k: round(x, 3) if isinstance(x, float) else x for k, x in r.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
