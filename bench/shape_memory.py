"""Best mode under varied load: memory and time with torch's GELU and with ours.

A best-mode search feeds the CLIP text tower batches of ever-varying shapes. On a CPU
torch's ``F.gelu`` runs through oneDNN, which compiles and caches a kernel per shape;
``models/activations.py`` runs the text towers' GELU through torch's own kernel instead.
This runs the same sequence of best-mode searches (batches of 1 to 16 images, drawn
with a fixed seed, features encoded beforehand) in a fresh process per variant, the
variants alternating, and reports each run's RSS before and after, the growth, the
search's milliseconds per image and a hash of all its prompts:

- ``torch``: the text tower's GELU modules put back to ``nn.GELU`` (oneDNN);
- ``ours``: as ``load_clip`` returns them.

    python bench/shape_memory.py                        # the tests' tiny CLIP, 200 batches, 3 rounds
    python bench/shape_memory.py --size b32 --batches 60

Random weights measure memory and speed, not prompt quality (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CAPTIONS, REPO_ROOT, ensure_models, make_images, offline_env

VARIANTS = ("torch", "ours")


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def worker(spec: dict) -> dict:
    offline_env()
    import torch

    from image2prompt import Config, Interrogator, SearchSettings
    from image2prompt.models.activations import NativeGELU

    torch.set_num_threads(spec["threads"])
    it = Interrogator.load(Config(clip_model=spec["clip"], caption_model=None, vocab=[spec["vocab"]],
                                  device="cpu", precision="fp32"))
    swapped = 0
    for clip in it.clips:
        for module in clip.model.modules():
            if type(module) is NativeGELU:
                swapped += 1
                if spec["variant"] == "torch":
                    module.__class__ = torch.nn.GELU
    images = make_images(64, size=224, seed=7)
    feats = it.encode(images, captions=[CAPTIONS[i % len(CAPTIONS)] for i in range(64)])
    settings = SearchSettings(mode="best")
    list(it.search(feats[:1], settings))  # tables embedded, caches warm
    rng = random.Random(spec["seed"])
    before, prompts, n = rss_mib(), [], 0
    t0 = time.perf_counter()
    for _ in range(spec["batches"]):
        k = rng.randint(1, 16)
        batch = [feats[rng.randrange(64)] for _ in range(k)]
        prompts += [r.prompt for r in it.search(batch, settings)]
        n += k
    seconds = time.perf_counter() - t0
    after = rss_mib()
    return {"variant": spec["variant"], "swapped": swapped, "images": n, "ms_per_image": 1000 * seconds / n,
            "rss_before": before, "rss_after": after, "growth": after - before,
            "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:12]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="tiny", choices=["tiny", "b32"],
                   help="tiny: the tests' CLIP (width 64); b32: random ViT-B/32")
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=str(REPO_ROOT / ".bench-out" / "shape-memory"))
    p.add_argument("--json", default=None, help="also write the runs here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        Path(spec["result"]).write_text(json.dumps(worker(spec)))
        return 0

    offline_env()
    from tests.conftest import SMALL_VOCAB
    from tests.support import tiny_models

    out = Path(args.out)
    vocab = out / "vocab"
    vocab.mkdir(parents=True, exist_ok=True)
    for name, lines in SMALL_VOCAB.items():
        (vocab / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if args.size == "tiny":
        clip_dir = out / "tiny-open-clip"
        if not (clip_dir / "open_clip_model.safetensors").exists():
            tiny_models.make_open_clip_dir(clip_dir)
    else:
        clip_dir = ensure_models(REPO_ROOT / ".bench-out" / "models", ["b32"])["b32"]
    runs = []
    for r in range(args.rounds):
        for variant in VARIANTS:
            spec = {"variant": variant, "clip": f"local-dir:{clip_dir}", "vocab": str(vocab),
                    "batches": args.batches, "seed": args.seed, "threads": args.threads,
                    "result": str(out / f"{variant}-{r}.json")}
            spec_path = out / f"{variant}-{r}.spec.json"
            spec_path.write_text(json.dumps(spec))
            subprocess.run([sys.executable, __file__, "--worker", str(spec_path)], check=True,
                           env={**os.environ, "PYTHONHASHSEED": "0"})
            run = json.loads(Path(spec["result"]).read_text())
            runs.append(run)
            print(f"round {r + 1} {variant:5s}: {run['ms_per_image']:.2f} ms/image, RSS "
                  f"{run['rss_before']:.0f} -> {run['rss_after']:.0f} MiB (+{run['growth']:.0f}), "
                  f"prompts {run['prompts']}, {run['swapped']} GELU modules", flush=True)
    print()
    print("| variant | ms per image (median, min) | RSS growth MiB (median, max) | prompts |")
    print("|---|---|---|---|")
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        ms = [r["ms_per_image"] for r in mine]
        growth = [r["growth"] for r in mine]
        print(f"| {variant} | {statistics.median(ms):.2f}, {min(ms):.2f} | {statistics.median(growth):.0f}, "
              f"{max(growth):.0f} | {', '.join(sorted({r['prompts'] for r in mine}))} |")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
