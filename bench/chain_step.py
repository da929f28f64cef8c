"""Time one best-mode chain step three ways: prefix-cached, padding-free full encodes, and
the reference's 77-token padded encodes (same model, same prompt, same phrases).

    python bench/chain_step.py --size b32 --phrases 1024
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, emit_report, ensure_models, offline_env

PREFIX = ("a photo of a dog sitting on a table, highly detailed, trending on artstation, "
          "by greg rutkowski, oil painting, soft light")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="b32", choices=["b32", "l14"])
    p.add_argument("--phrases", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(REPO_ROOT / ".bench-out"))
    p.add_argument("--markdown-out", default=None)
    args = p.parse_args(argv)
    offline_env()
    import numpy as np
    import open_clip
    import torch

    from image2prompt.models.clip import load_clip
    from image2prompt.vocab import load_classic_pack

    model_dir = ensure_models(Path(args.out) / "models", [args.size])[args.size]
    enc = load_clip(f"local-dir:{model_dir}", device=args.device, precision="fp32")
    phrases = random.Random(0).sample(list(load_classic_pack()["flavors"].labels), args.phrases)
    texts = [PREFIX + ", " + ph for ph in phrases]
    tok = open_clip.get_tokenizer("ViT-B-32")  # the CLIP BPE with a 77-token context, as the reference uses

    def padded() -> np.ndarray:
        with torch.inference_mode():
            f = enc.model.encode_text(tok(texts).to(enc.device)).float()
        return torch.nn.functional.normalize(f, dim=-1).cpu().numpy()

    ways = {"prefix-cached": lambda: enc.encode_extensions(PREFIX, phrases),
            "padding-free full encodes": lambda: enc.encode_texts(texts),
            "reference-style 77-token encodes": padded}
    enc.encode_extensions(PREFIX, phrases[:8])  # warm-up (and phrase token ids)
    rows, results = [], {}
    for name, fn in ways.items():
        t0, tok0 = time.perf_counter(), enc.tokens_encoded
        results[name] = fn()
        secs = time.perf_counter() - t0
        tokens = enc.tokens_encoded - tok0 if name != "reference-style 77-token encodes" else 77 * len(texts)
        rows.append([name, f"{secs:.2f}", f"{tokens:,}"])
    base = float(rows[-1][1])
    for r in rows:
        r.append(f"{base / float(r[1]):.1f}x")
    diff = float(np.abs(results["prefix-cached"] - results["reference-style 77-token encodes"]).max())
    emit_report(args.device, [f"size {args.size}, {args.phrases} phrases, prefix of {enc.count_tokens(PREFIX)} "
                              f"tokens; max |prefix-cached - padded| = {diff:.2e}"],
                ["way", "seconds", "token positions", "vs 77-token"], rows, args.markdown_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
