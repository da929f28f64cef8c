"""Peak GPU memory of best mode: ours (memory-budgeted batches) vs the reference.

Loads a random-weight ViT-L/14-size CLIP and a BLIP-base-size captioner through
the same loaders users hit, runs best mode with the full classic vocabulary at
several candidate-pool sizes, and reports torch.cuda.max_memory_allocated. The
reference encodes every candidate of a chain step in one batch, which is where
12 GB cards ran out of memory; ours sizes batches from --memory-budget, so the
peak should not grow with the pool.

    python bench/memory.py --device cuda --pools 512,2048
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, emit_report, ensure_models, make_images, offline_env


def make_blip_base(out: Path) -> Path:
    """A random BLIP with blip-base's tower sizes (vision ViT-B/16 at 384 px, BERT-base decoder)."""
    import torch
    from transformers import BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    from tests.support.tiny_models import BLIP_WORDS

    if (out / "model.safetensors").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    words = list(dict.fromkeys(BLIP_WORDS))
    (out / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + words) + "\n")
    tok = BertTokenizerFast(str(out / "vocab.txt"), do_lower_case=True, bos_token="[DEC]")
    cfg = BlipConfig(text_config=dict(vocab_size=len(tok), pad_token_id=0, bos_token_id=5, eos_token_id=3,
                                      sep_token_id=3),
                     vision_config=dict(image_size=384, patch_size=16))
    torch.manual_seed(0)
    BlipForConditionalGeneration(cfg).save_pretrained(out)
    BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 384, "width": 384}),
                  tokenizer=tok).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--pools", default="512,2048", help="candidate-pool sizes to compare")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--size", default="l14", choices=["l14", "b32"])
    p.add_argument("--flavors", type=int, default=None, help="sample this many flavors (default: the full vocabulary)")
    p.add_argument("--out", default=str(REPO_ROOT / ".bench-out"))
    p.add_argument("--markdown-out", default=None)
    args = p.parse_args(argv)
    offline_env()
    import torch

    from image2prompt import Config, Interrogator, SearchSettings
    from image2prompt.cache import EmbeddingCache
    from image2prompt.models.captioners import load_captioner
    from image2prompt.models.clip import load_clip
    from image2prompt.vocab import load_folder_pack, reference_data_dir

    out = Path(args.out)
    clip_dir = ensure_models(out / "models", [args.size])[args.size]
    data_dir = reference_data_dir()
    if args.flavors:
        from _common import write_vocab_sample

        data_dir = out / f"vocab-memory-{args.flavors}"
        write_vocab_sample(data_dir, reference_data_dir(), flavors=args.flavors, artists=100)
    blip_dir = make_blip_base(out / "models" / "blip-base-size")
    images = make_images(args.images)
    cuda = args.device.startswith("cuda")

    def peak_reset() -> None:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib() -> float:
        if not cuda:
            return float("nan")
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**30

    rows = []
    enc = load_clip(f"local-dir:{clip_dir}", device=args.device)
    cap = load_captioner(f"local-dir:{blip_dir}", device=args.device)
    pack = load_folder_pack(data_dir)
    cache = EmbeddingCache(out / "cache-memory", download=False)
    for pool in [int(x) for x in args.pools.split(",")]:
        ci = Interrogator(enc, cap, pack, cache, Config(caption_model=None))
        settings = SearchSettings(mode="best", candidates=pool)
        ci.prepare()
        ci.interrogate(images[0], settings=settings)
        peak_reset()
        t0 = time.perf_counter()
        for img in images:
            ci.interrogate(img, settings=settings)
        secs = (time.perf_counter() - t0) / len(images)
        rows.append(["image2prompt", pool, f"{peak_gib():.2f}", f"{secs:.2f}"])
        print(rows[-1], flush=True)

    if args.reference:
        import clip_interrogator as ref
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{clip_dir}", device=args.device,
                                                                     precision="fp16" if cuda else "fp32")
        del enc, ci
        if cuda:
            torch.cuda.empty_cache()
        for pool in [int(x) for x in args.pools.split(",")]:
            cfg = ref.Config(clip_model_name=("ViT-L-14" if args.size == "l14" else "ViT-B-32") + "/bench",
                             caption_model_name="blip-base", device=args.device,
                             quiet=True, download_cache=False, cache_path=str(out / "cache-memory-ref"),
                             data_path=str(data_dir), chunk_size=2048, flavor_intermediate_count=pool)
            cfg.clip_model, cfg.clip_preprocess = model.eval(), preprocess
            cfg.caption_model, cfg.caption_processor = cap.model, cap.processor
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = ref.Interrogator(cfg)
                r.interrogate(images[0])
                peak_reset()
                t0 = time.perf_counter()
                try:
                    for img in images:
                        r.interrogate(img)
                    note = f"{(time.perf_counter() - t0) / len(images):.2f}"
                except torch.OutOfMemoryError:
                    note = "out of memory"
            rows.append(["clip-interrogator 0.6.0", pool, f"{peak_gib():.2f}", note])
            print(rows[-1], flush=True)
    emit_report(args.device, [
        f"models: random-weight {args.size} CLIP ({'fp16' if cuda else 'fp32'}) + BLIP-base-size captioner; "
        f"vocabulary: {'full classic' if not args.flavors else f'{args.flavors} sampled flavors'}",
    ], ["implementation", "candidate pool", "peak GPU memory (GiB)", "s/image"], rows, args.markdown_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
