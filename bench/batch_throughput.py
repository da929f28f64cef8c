"""Folder throughput: image2prompt's batched pipeline vs the reference's own folder loop, same models.

Both read the same folder of JPEG files from disk, caption every image with the same
captioner (a random-weight BLIP at blip-base's tower sizes, greedy, 32 new tokens at most,
as the reference's default) and rank the same vocabulary sample with the same random
ViT-B/32-size CLIP. The reference runs its CLI's loop (one image at a time:
``Image.open``, ``interrogate_fast`` / ``interrogate``); image2prompt runs its runner
(decoding in worker threads ahead of the model, captions and image encodes batched),
writing JSONL as it goes. Tables are built before the clock starts, and one warm-up image
is excluded. Each implementation runs in its own process; with ``--parallel`` (the
default) the two run at the same time with one torch thread each, so both see the same
machine load (this machine is noisy), else one after the other with ``--threads`` each.

    python bench/batch_throughput.py                          # 200 images fast, 10 best
    python bench/batch_throughput.py --images 40 --best-images 2 --modes fast,best
    python bench/batch_throughput.py --no-parallel --threads 2 --modes fast

Random weights measure speed, not prompt quality (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, emit_report, ensure_models, make_images, modes_sample, offline_env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200, help="images in the folder (fast mode runs them all)")
    p.add_argument("--best-images", type=int, default=10,
                   help="best mode runs the first N (the reference needs ~30 s per best-mode image here)")
    p.add_argument("--modes", default="fast,best")
    p.add_argument("--candidates", type=int, default=64, help="best mode's pool (both implementations)")
    p.add_argument("--batch-size", type=int, default=16, help="image2prompt: images per batch")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--our-precision", default="fp32", choices=["fp32", "bf16"],
                   help="image2prompt's precision (the reference runs fp32 on CPU; bf16 is a user option)")
    p.add_argument("--our-caption-precision", default=None, choices=["fp32", "bf16"],
                   help="image2prompt's captioner precision, if not --our-precision (--caption-precision)")
    p.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=True,
                   help="run the two implementations at the same time (default) or one after the other")
    p.add_argument("--out-dir", default=str(REPO_ROOT / ".bench-out"))
    p.add_argument("--markdown-out", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def prepare(args: argparse.Namespace) -> dict:
    from memory import make_blip_base

    out = Path(args.out_dir)
    clip_dir = ensure_models(out / "models", ["b32"])["b32"]
    blip_dir = make_blip_base(out / "models" / "blip-base-size")
    vocab_dir, counts, _ = modes_sample(out, 300, 200)
    folder = out / f"throughput-images-{args.images}"
    if not folder.is_dir() or len(list(folder.glob("*.jpg"))) != args.images:
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(make_images(args.images, size=256)):
            img.save(folder / f"{i:05d}.jpg", quality=90)
    return {"clip_dir": str(clip_dir), "blip_dir": str(blip_dir), "vocab_dir": str(vocab_dir),
            "folder": str(folder), "cache_root": str(out / "throughput-cache"), "counts": counts}


# -- workers (one fresh process per implementation and mode) --------------------------------------


def _files(folder: str, n: int) -> list[str]:
    names = sorted(f for f in os.listdir(folder) if f.endswith((".jpg", ".png")))
    return [os.path.join(folder, f) for f in names[:n]]


def worker_reference(spec: dict) -> dict:
    import warnings

    import clip_interrogator as reference
    import open_clip
    from PIL import Image
    from transformers import AutoProcessor, BlipForConditionalGeneration

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{spec['clip_dir']}", precision="fp32")
    model.eval()
    blip = BlipForConditionalGeneration.from_pretrained(spec["blip_dir"]).eval()
    cfg = reference.Config(clip_model_name="ViT-B-32/bench", caption_model_name="blip-base", device="cpu",
                           quiet=True, download_cache=False, cache_path=spec["cache_dir"],
                           data_path=spec["vocab_dir"], flavor_intermediate_count=spec["candidates"])
    cfg.clip_model, cfg.clip_preprocess = model, preprocess  # class attributes in the reference's Config
    cfg.caption_model, cfg.caption_processor = blip, AutoProcessor.from_pretrained(spec["blip_dir"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = reference.Interrogator(cfg)  # builds its tables (not timed)
        run = ci.interrogate_fast if spec["mode"] == "fast" else ci.interrogate
        files = _files(spec["folder"], spec["n"] + 1)
        run(Image.open(files[0]).convert("RGB"))  # warm-up
        t0, wall0 = time.perf_counter(), time.time()
        prompts, done_at = [], []
        for path in files[1:]:  # the reference CLI's folder loop
            prompts.append(run(Image.open(path).convert("RGB")))
            done_at.append(time.time())
        secs = time.perf_counter() - t0
    return {"seconds": secs, "images": len(prompts), "prompts": prompts, "start": wall0, "done_at": done_at}


def worker_ours(spec: dict) -> dict:
    from image2prompt import Config, Interrogator, SearchSettings
    from image2prompt.cache import EmbeddingCache
    from image2prompt.models.captioners import load_captioner
    from image2prompt.models.clip import load_clip
    from image2prompt.render import JsonlWriter
    from image2prompt.runner import Runner
    from image2prompt.vocab import load_folder_pack

    enc = load_clip(f"local-dir:{spec['clip_dir']}", device="cpu", precision=spec["precision"])
    cap = load_captioner(f"local-dir:{spec['blip_dir']}", device="cpu",
                         precision=spec.get("caption_precision") or spec["precision"])
    ci = Interrogator(enc, cap, load_folder_pack(spec["vocab_dir"]), EmbeddingCache(spec["cache_dir"], download=False),
                      Config(caption_model=None, caption_batch_size=spec["batch_size"],
                             image_batch_size=spec["batch_size"]))
    ci.prepare()  # tables (not timed)
    settings = SearchSettings(mode=spec["mode"], candidates=spec["candidates"])
    files = _files(spec["folder"], spec["n"] + 1)
    ci.interrogate(__import__("PIL.Image", fromlist=["open"]).open(files[0]).convert("RGB"), settings=settings)
    out = Path(spec["result_path"]).with_suffix(".jsonl")
    t0, wall0 = time.perf_counter(), time.time()
    prompts: dict[str, str] = {}
    done_at: list[float] = []
    with open(out, "w", encoding="utf-8") as stream:
        writer = JsonlWriter(stream, single=False)
        for record in Runner(ci, settings, batch_size=spec["batch_size"], order="completion").run(files[1:]):
            if record.result is not None:
                writer.write(record.result)
                prompts[record.source] = record.result.prompt
                done_at.append(time.time())
        writer.close()
    secs = time.perf_counter() - t0
    return {"seconds": secs, "images": len(prompts), "prompts": [prompts.get(f) for f in files[1:]],
            "start": wall0, "done_at": done_at}


def overlap_rates(ref: dict, ours: dict) -> tuple[float, float, float] | None:
    """Each side's images/s over the seconds both were running (parallel runs only).

    The faster side finishes first and the slower one then has the machine to itself, which
    flatters the slower side's whole-run rate. This takes the window in which both were
    timing, and each side's rate between its first and its last completion inside it: the
    images finished after the first, over the seconds between the two. The runner finishes
    a whole batch at once, so a window edge that cuts a batch would otherwise count all of
    it or none of it. Returns (window seconds, reference ips, ours ips), or None when either
    side finished fewer than two times inside the window.
    """
    lo = max(ref["start"], ours["start"])
    hi = min(ref["done_at"][-1] if ref["done_at"] else lo, ours["done_at"][-1] if ours["done_at"] else lo)

    def rate(done_at: list[float]) -> float | None:
        inside = [t for t in done_at if lo <= t <= hi]
        if len(inside) < 2 or inside[-1] <= inside[0]:
            return None
        return sum(t > inside[0] for t in inside) / (inside[-1] - inside[0])

    r, o = rate(ref["done_at"]), rate(ours["done_at"])
    if r is None or o is None:
        return None
    return hi - lo, r, o


def worker_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    result = (worker_reference if spec["impl"] == "reference" else worker_ours)(spec)
    result["loadavg_after"] = os.getloadavg()[0]
    Path(spec["result_path"]).write_text(json.dumps(result))


def launch(spec: dict, work: Path) -> tuple[subprocess.Popen, Path]:
    work.mkdir(parents=True, exist_ok=True)
    spec_path = work / f"{spec['tag']}.spec.json"
    result_path = work / f"{spec['tag']}.result.json"
    result_path.unlink(missing_ok=True)
    spec = dict(spec, result_path=str(result_path))
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(spec["threads"]))
    log = open(work / f"{spec['tag']}.log", "w")
    proc = subprocess.Popen([sys.executable, __file__, "--worker", str(spec_path)], env=env, stdout=log, stderr=log)
    return proc, result_path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    offline_env()
    if args.worker:
        worker_main(args.worker)
        return 0
    prep = prepare(args)
    work = Path(args.out_dir) / "throughput-runs" / time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        n = (args.images if mode == "fast" else min(args.images, args.best_images)) - 1  # one is the warm-up
        results: dict[str, dict] = {}
        specs = [dict(prep, impl=impl, mode=mode, n=n, tag=f"{impl}-{mode}", threads=args.threads,
                      candidates=args.candidates, batch_size=args.batch_size, precision=args.our_precision,
                      caption_precision=args.our_caption_precision,
                      cache_dir=str(Path(prep["cache_root"]) / f"{impl}-{args.our_precision}"))
                 for impl in ("reference", "ours")]
        print(f"{mode}: {n} timed images", flush=True)
        if args.parallel:
            running = [(s, *launch(s, work)) for s in specs]
            for s, proc, path in running:
                proc.wait()
                results[s["impl"]] = json.loads(path.read_text()) if path.exists() else {"error": proc.returncode}
        else:
            for s in specs:
                proc, path = launch(s, work)
                proc.wait()
                results[s["impl"]] = json.loads(path.read_text()) if path.exists() else {"error": proc.returncode}
        ref, ours = results["reference"], results["ours"]
        if "error" in ref or "error" in ours:
            print(f"  a worker failed: see {work}", flush=True)
            continue
        same = sum(a == b for a, b in zip(ref["prompts"], ours["prompts"]))
        r_ips, o_ips = ref["images"] / ref["seconds"], ours["images"] / ours["seconds"]
        for name, res, ips in (("reference (folder loop)", ref, r_ips), ("image2prompt (runner)", ours, o_ips)):
            rows.append([mode, name, res["images"], f"{res['seconds']:.1f}", f"{ips:.3f}",
                         f"{res['loadavg_after']:.1f}"])
        rows.append([mode, "speedup", "", "", f"{o_ips / r_ips:.2f}x", f"identical prompts {same}/{n}"])
        print(f"  reference {r_ips:.3f} img/s, ours {o_ips:.3f} img/s ({o_ips / r_ips:.2f}x)", flush=True)
        both = overlap_rates(ref, ours) if args.parallel else None
        if both is not None:
            secs, r_both, o_both = both
            rows.append([mode, "while both ran", "", f"{secs:.1f}", f"{r_both:.3f} vs {o_both:.3f}",
                         f"speedup {o_both / r_both:.2f}x" if r_both else "reference finished none"])
            print(f"  while both ran ({secs:.0f} s): reference {r_both:.3f} img/s, ours {o_both:.3f} img/s", flush=True)
    notes = [
        f"images: {args.images} JPEG files (256 px) in {prep['folder']}; best mode on the first {args.best_images}",
        f"models: random ViT-B/32-size open_clip, random BLIP at blip-base's sizes (captions included); "
        f"vocabulary sample {prep['counts']}; best-mode pool {args.candidates}; batch size {args.batch_size}",
        f"{'parallel' if args.parallel else 'sequential'} runs, {args.threads} torch thread(s) per process; "
        f"reference fp32, image2prompt {args.our_precision}"
        + (f" (captioner {args.our_caption_precision})" if args.our_caption_precision else ""),
        "prompts differ from the reference's because image2prompt cleans captions (BLIP's repeated words and "
        "'arafed' removed); with random weights the captions are long runs of repeated words",
    ]
    emit_report("cpu", notes, ["mode", "implementation", "images", "seconds", "images/s", "load after"], rows,
                args.markdown_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
