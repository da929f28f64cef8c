"""Train the quality lab's miniature CLIP from scratch on the toy world, on CPU.

    python -m bench.toyworld.train                      # rebuild bench/toyworld/model (about 25 min on 2 cores)
    python -m bench.toyworld.train --steps 50 --out /tmp/toy-clip   # a quick, worse model

The model is open_clip's own CLIP class with a small registered config
(``Toy-CLIP``: a ViT over 64 px images in 8 px patches, a 77-token text tower)
and the real open_clip tokenizer, trained with the usual symmetric contrastive
loss on (image, caption) pairs drawn from :mod:`bench.toyworld.world`. It is
saved as an open_clip ``local-dir:`` folder (``open_clip_config.json`` and fp16
``open_clip_model.safetensors``), the layout users' own folders have, and loads
with ``--clip local-dir:bench/toyworld/model``.

Deterministic: seeds are fixed, the data is procedural, and torch runs on a fixed
number of threads. The same command on the same torch build gives the same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

from .world import SIZE, caption, render, sample_scenes

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "model"
MODEL_NAME = "Toy-CLIP"
MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip.OPENAI_DATASET_MEAN
STD = (0.26862954, 0.26130258, 0.27577711)  # open_clip.OPENAI_DATASET_STD

TOY_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": SIZE, "layers": 4, "width": 128, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}

TRAIN_SEED = 20261201


def _register() -> None:
    import open_clip

    cfg_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "image2prompt-toy-clip-cfg"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / f"{MODEL_NAME}.json").write_text(json.dumps(TOY_CFG))
    open_clip.add_model_config(str(cfg_dir))


def _encode_text(model, ids):
    """open_clip's encode_text without padding to 77: identical features, fewer positions."""
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    n = ids.shape[1]
    x = model.token_embedding(ids) + model.positional_embedding[:n]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = text_global_pool(x, ids, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    return F.normalize(x @ model.text_projection, dim=-1)


def _images_tensor(images):
    import torch

    arr = np.stack([np.asarray(im, np.float32) / 255.0 for im in images])
    arr = (arr - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def save(model, out: Path) -> None:
    """Write the ``local-dir:`` folder: fp16 safetensors and open_clip's config file."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    (out / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": TOY_CFG, "preprocess_cfg": {"mean": list(MEAN), "std": list(STD)}}, indent=2) + "\n")


def train(out: Path, *, steps: int, batch: int, n_train: int, lr: float, threads: int, log_every: int = 50,
          save_every: int = 0) -> dict:
    import open_clip
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(TRAIN_SEED)
    random.seed(TRAIN_SEED)
    _register()
    model = open_clip.create_model(MODEL_NAME)  # random init: this script trains it from scratch
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    model.train()

    t0 = time.time()
    scenes = sample_scenes(n_train, seed=TRAIN_SEED)
    pixels = _images_tensor([render(s) for s in scenes])
    print(f"rendered {n_train} training images in {time.time() - t0:.0f}s", file=sys.stderr)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    rng = random.Random(TRAIN_SEED + 1)
    order: list[int] = []
    losses = []
    t0 = time.time()
    for step in range(steps):
        if len(order) < batch:
            more = list(range(n_train))
            rng.shuffle(more)
            order += more
        idx, order = order[:batch], order[batch:]
        ids = tokenizer([caption(scenes[i], rng) for i in idx])
        ids = ids[:, : int((ids != 0).sum(1).max())]
        img = F.normalize(model.encode_image(pixels[idx]), dim=-1)
        txt = _encode_text(model, ids)
        logits = model.logit_scale.exp() * img @ txt.T
        labels = torch.arange(len(idx))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss))
        if (step + 1) % log_every == 0 or step == 0:
            rate = (time.time() - t0) / (step + 1)
            print(f"step {step + 1}/{steps} loss {np.mean(losses[-log_every:]):.3f} "
                  f"{rate:.2f}s/step eta {rate * (steps - step - 1) / 60:.1f} min", file=sys.stderr, flush=True)
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            save(model, out)  # a checkpoint to look at while training goes on
    seconds = time.time() - t0

    model.eval()
    save(model, out)
    info = {"steps": steps, "batch": batch, "train_images": n_train, "lr": lr, "threads": threads,
            "seed": TRAIN_SEED, "final_loss": float(np.mean(losses[-log_every:])), "train_seconds": round(seconds),
            "torch": torch.__version__, "open_clip": open_clip.__version__,
            "command": "python -m bench.toyworld.train " + " ".join(sys.argv[1:])}
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=1100)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--train-images", type=int, default=24000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-every", type=int, default=0, help="also save a checkpoint every N steps")
    args = ap.parse_args(argv)
    info = train(args.out, steps=args.steps, batch=args.batch, n_train=args.train_images, lr=args.lr,
                 threads=args.threads, save_every=args.save_every)
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
