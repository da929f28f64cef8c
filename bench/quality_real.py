"""Measure prompt quality with real CLIP weights, on (image, true prompt) pairs.

    python bench/quality_real.py PAIRS_DIR                         # best, turbo, fast, classic
    python bench/quality_real.py PAIRS_DIR --limit 200 --json /tmp/real.json
    python bench/quality_real.py --pairs sample.jsonl --modes best,fast --device cuda
    python bench/quality_real.py PAIRS_DIR --clip ViT-L-14/openai --eval-clip ViT-H-14/laion2b_s32b_b79k \\
        --sentence-model all-MiniLM-L6-v2                          # adds sentence-embedding similarity
    python bench/quality_real.py PAIRS_DIR --caption-model none --caption-from-prompt

Input: a folder where each image (jpg, png, webp, ...) has a sidecar ``.txt`` of the
same stem holding the prompt it was generated from (a DiffusionDB or Lexica
sample, say), or ``--pairs FILE`` (``.jsonl`` or ``.csv``) with the columns
``image`` (a path relative to FILE's folder) and ``prompt``. A file that cannot be
read as an image is reported on stderr and skipped; the run goes on without it.

The search runs with ``--clip`` and is judged by a second, held-out CLIP,
``--eval-clip``: a prompt found by maximising one encoder's similarity is
expected to score well under that encoder, so only another encoder's opinion says
something (prompt-inversion papers such as PEZ, Wen et al. 2023, evaluate this
way). Both load offline (weights must be on disk or in the Hugging Face cache). Per
mode, each with a 95% percentile bootstrap interval over the images:

- ``eval_similarity``: the evaluator's cosine between the image and our prompt;
  ``ratio_to_true``: its mean over the mean of the true prompts' (paired);
- ``search_similarity``: the search CLIP's own score of the prompt (Result.similarity),
  for contrast: a gap between the two is overfitting to the search encoder;
- ``text_similarity_clip``: the evaluator CLIP's text-text cosine between our prompt
  and the true prompt (always); ``text_similarity_sentence``: the same with a
  sentence-embedding model, when ``sentence-transformers`` is installed and
  ``--sentence-model`` names one;
- ``tokens`` (CLIP tokens, start and end excluded) and ``seconds_per_image`` (the
  search alone, after one warm-up image and with every vocabulary table already
  embedded; encoding and captioning are timed once, in ``timing``).

Reference rows, same figures: the true prompt itself (the row ours is compared
with), the true prompt of another image (a derangement of the images: what an
unrelated prompt from the same distribution scores, i.e. the floor), and the
caption alone (what the added phrases buy over it).

What the figures cannot say: CLIP similarity is a proxy for "regenerates a similar
image", and the true prompt is not the best prompt for its image under any CLIP (it
was written for a generator, often past CLIP's 77 tokens, which every CLIP cuts), so
a ratio above 1 is possible and does not mean "better than the author". Text
similarity to the true prompt rewards wording the author happened to use; a prompt
can describe the image well and share few words with it. ``--caption-from-prompt``
copies the true prompt up to its first comma into the caption, so it inflates text
similarity (and helps eval similarity): use it only to test the search without a
captioner, never to report quality. With ``--clip`` equal to ``--eval-clip`` the
evaluator is not held out (a warning says so). Intervals are over these images only:
they say nothing about other prompt distributions.

Exit status: 0 on success, 2 on an error with a one-line message (a model that
cannot be loaded offline, a bad vocabulary, no readable pairs).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, offline_env, timed_search  # noqa: F401  (REPO_ROOT: the repository root on sys.path)
from bench.toyworld.metrics import bootstrap, paired_ratio

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DEFAULT_MODES = ("best", "turbo", "fast", "classic")
DEFAULT_CLIP = "ViT-L-14/openai"
DEFAULT_EVAL_CLIP = "ViT-H-14/laion2b_s32b_b79k"
SHUFFLE_SEED = 0

__all__ = ["Pair", "caption_from_prompt", "derangement", "discover_pairs", "evaluate", "main", "markdown",
           "read_pairs_file"]


class Failure(Exception):
    """A problem with the input or the options: printed on one line, exit status 2."""


@dataclass
class Pair:
    image: Path
    prompt: str


# -- input -------------------------------------------------------------------------------
def discover_pairs(folder: Path, log: Callable[[str], None] = print) -> list[Pair]:
    """Every image under ``folder`` (recursively, sorted) that has a non-empty sidecar .txt."""
    if not folder.is_dir():
        raise Failure(f"{folder}: not a folder")
    pairs = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        txt = path.with_suffix(".txt")
        if not txt.is_file():
            log(f"skipped {path}: no sidecar {txt.name}")
            continue
        prompt = txt.read_text(encoding="utf-8", errors="replace").strip()
        if not prompt:
            log(f"skipped {path}: {txt.name} is empty")
            continue
        pairs.append(Pair(path, prompt))
    return pairs


def read_pairs_file(path: Path) -> list[Pair]:
    """``image`` and ``prompt`` columns of a .jsonl or .csv file; image paths relative to the file."""
    if not path.is_file():
        raise Failure(f"{path}: no such file")
    rows: list[dict[str, Any]]
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise Failure(f"{path}:{n}: not JSON ({err.msg})") from None
    else:
        raise Failure(f"{path}: --pairs takes a .jsonl or .csv file")
    pairs = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "image" not in row or "prompt" not in row:
            raise Failure(f"{path}: row {n} lacks the 'image' and 'prompt' columns")
        prompt = str(row["prompt"] or "").strip()
        if prompt:
            pairs.append(Pair((path.parent / str(row["image"])).resolve(), prompt))
    return pairs


def load_pairs(pairs: Sequence[Pair], limit: int | None, log: Callable[[str], None]
               ) -> tuple[list[Any], list[Pair], list[dict[str, str]]]:
    """Decode images in order until ``limit`` good ones; bad files are reported and skipped."""
    from image2prompt.errors import ImageLoadError
    from image2prompt.io import load_image

    images, kept, skipped = [], [], []
    for pair in pairs:
        if limit is not None and len(kept) >= limit:
            break
        try:
            images.append(load_image(pair.image))
        except ImageLoadError as err:
            log(f"skipped {pair.image}: {err.reason}")
            skipped.append({"image": str(pair.image), "error": err.reason})
            continue
        kept.append(pair)
    return images, kept, skipped


def caption_from_prompt(prompt: str) -> str:
    """The prompt up to its first comma (the whole prompt if that part is empty)."""
    head = prompt.split(",", 1)[0].strip()
    return head or prompt.strip()


def derangement(n: int, seed: int = SHUFFLE_SEED) -> list[int] | None:
    """A seeded permutation with no fixed point (image i gets the prompt of image out[i]); None for n < 2."""
    if n < 2:
        return None
    order = np.random.default_rng(seed).permutation(n)
    out = [0] * n
    for k in range(n):
        out[int(order[k])] = int(order[(k + 1) % n])
    return out


# -- statistics --------------------------------------------------------------------------
def interval(values: Sequence[float | None]) -> dict[str, float | int | None]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    stat, low, high = bootstrap(vals)
    return {"stat": stat, "low": low, "high": high, "n": len(vals)}


def ratio_interval(num: Sequence[float], den: Sequence[float]) -> dict[str, float | int | None]:
    if not num:
        return {"stat": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    stat, low, high = paired_ratio(num, den)
    return {"stat": stat, "low": low, "high": high, "n": len(num)}


def _rows_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [N, D] arrays (the encoders' outputs are unit vectors already)."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.einsum("nd,nd->n", a, b)


# -- the run -----------------------------------------------------------------------------
def evaluate(pairs: Sequence[Pair], *, clip: str, eval_clip: str, caption_model: str | None,
             use_prompt_caption: bool, vocab: Sequence[str], modes: Sequence[str], device: str,
             precision: str = "auto", limit: int | None = None, cache_dir: str | None = None,
             sentence_model: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every mode on the pairs and return the report (see the module docstring)."""
    from image2prompt import Config, Interrogator, SearchSettings
    from image2prompt.modes import get_mode

    for m in modes:
        get_mode(m)  # SettingsError for an unknown mode, before anything loads (SearchSettings does not check)
    settings = {m: SearchSettings(mode=m) for m in modes}
    if not use_prompt_caption and caption_model is None:
        missing = [m for m in modes if get_mode(m).needs_caption(False)]
        if missing:
            raise Failure(f"mode {', '.join(missing)} needs a caption and --caption-model is none: pass "
                          "--caption-from-prompt, or a caption model")
    offline_env()
    sentence = _load_sentence_model(sentence_model, device, log)
    images, kept, skipped = load_pairs(pairs, limit, log)
    if not kept:
        raise Failure("no readable (image, prompt) pairs" + (f" ({len(skipped)} unreadable)" if skipped else ""))
    n = len(kept)
    cache = cache_dir or tempfile.mkdtemp(prefix="i2p-quality-real-")
    t0 = time.perf_counter()
    it = Interrogator.load(Config(clip_model=clip, caption_model=None if use_prompt_caption else caption_model,
                                  vocab=list(vocab), device=device, precision=precision, cache_dir=cache,
                                  download_cache=False))
    ev = Interrogator.load(Config(clip_model=eval_clip, caption_model=None, vocab=list(vocab), device=device,
                                  precision=precision, cache_dir=cache, download_cache=False))
    load_s = time.perf_counter() - t0
    held_out = not (clip.strip() == eval_clip.strip() or set(it.encoder_keys) & set(ev.encoder_keys))
    if not held_out:
        log(f"warning: --clip and --eval-clip are the same model ({it.clip_name}): the evaluator is not "
            "held out, so eval similarity is the search's own objective")

    trues = [p.prompt for p in kept]
    given = [caption_from_prompt(t) for t in trues] if use_prompt_caption else [None] * n
    sources = [str(p.image) for p in kept]
    t0 = time.perf_counter()
    feats = it.encode(images, given, sources=sources, generate_captions=not use_prompt_caption)
    encode_s = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    it.prepare()  # every table embedded now, so no mode's timing pays for it
    prepare_s = time.perf_counter() - t0
    ev_feats = ev.encode(images, generate_captions=False)
    captions = [f.caption for f in feats]

    prompts: dict[str, list[str]] = {}
    per_mode: dict[str, dict[str, Any]] = {}
    for m in modes:
        results, seconds = timed_search(it, feats, settings[m])  # after one untimed image
        prompts[m] = [r.prompt for r in results]
        per_mode[m] = {"results": results, "seconds_per_image": seconds}
        log(f"{m}: {seconds:.3f} s per image")

    shuffle = derangement(n)
    rows: dict[str, list[str | None]] = {"true": list(trues),
                                         "shuffled": [trues[j] for j in shuffle] if shuffle else [None] * n,
                                         "caption": list(captions)}
    rows.update({m: list(prompts[m]) for m in modes})
    eval_sim = _eval_similarities(ev, ev_feats, rows)
    text_clip = _text_similarities(lambda texts: [c.encode_texts(texts) for c in ev.clips], trues, rows)
    text_sent = (_text_similarities(lambda texts: [sentence.encode(texts, normalize_embeddings=True)], trues, rows)
                 if sentence is not None else None)

    def figures(name: str, tokens: list[int | None]) -> dict[str, Any]:
        fig: dict[str, Any] = {"eval_similarity": interval(eval_sim[name])}
        pairs_ = [(a, b) for a, b in zip(eval_sim[name], eval_sim["true"]) if a is not None]
        fig["ratio_to_true"] = ratio_interval([a for a, _ in pairs_], [b for _, b in pairs_])
        fig["text_similarity_clip"] = interval(text_clip[name])
        fig["text_similarity_sentence"] = interval(text_sent[name]) if text_sent is not None else None
        fig["tokens"] = interval(tokens)
        return fig

    def count(texts: list[str | None]) -> list[int | None]:
        return [it.count_tokens(t) if t else None for t in texts]

    reference = {name: figures(name, count(rows[name])) for name in ("true", "shuffled", "caption")}
    reference["shuffled"]["true_minus_shuffled"] = (
        interval([a - b for a, b in zip(eval_sim["true"], eval_sim["shuffled"])]) if shuffle else None)
    if use_prompt_caption:
        reference["caption"]["note"] = "the caption is the true prompt up to its first comma (--caption-from-prompt)"
    mode_figs = {}
    for m in modes:
        results = per_mode[m]["results"]
        fig = figures(m, [r.token_count for r in results])
        fig["search_similarity"] = interval([r.similarity for r in results])
        fig["seconds_per_image"] = per_mode[m]["seconds_per_image"]
        mode_figs[m] = fig

    per_image = []
    for i, pair in enumerate(kept):
        entry: dict[str, Any] = {"image": str(pair.image), "true_prompt": pair.prompt, "caption": captions[i],
                                 "shuffled_from": sources[shuffle[i]] if shuffle else None}
        for name in ("true", "shuffled", "caption"):
            entry[f"eval_similarity_{name}"] = eval_sim[name][i]
        entry["modes"] = {}
        for m in modes:
            r = per_mode[m]["results"][i]
            entry["modes"][m] = {
                "prompt": r.prompt, "tokens": r.token_count, "eval_similarity": eval_sim[m][i],
                "search_similarity": r.similarity, "text_similarity_clip": text_clip[m][i],
                "text_similarity_sentence": text_sent[m][i] if text_sent is not None else None,
            }
        per_image.append(entry)

    return {
        "config": {
            "clip": it.clip_name, "eval_clip": ev.clip_name, "held_out": held_out,
            "caption_model": None if use_prompt_caption else it.caption_name,
            "caption_from_prompt": use_prompt_caption, "vocab": list(vocab), "modes": list(modes),
            "device": device, "precision": precision, "limit": limit,
            "sentence_model": sentence_model if sentence is not None else None,
            "text_similarity_clip": f"text-text cosine under the evaluator CLIP ({ev.clip_name})",
            "shuffle_seed": SHUFFLE_SEED,
        },
        "images": {"found": len(pairs), "used": n, "skipped": skipped},
        "timing": {"load_s": load_s, "prepare_s": prepare_s, "encode_s_per_image": encode_s},
        "reference": reference,
        "modes": mode_figs,
        "per_image": per_image,
    }


def _load_sentence_model(name: str | None, device: str, log: Callable[[str], None]) -> Any:
    if not name:
        return None
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        log("warning: sentence-transformers is not installed: --sentence-model ignored "
            "(text similarity is the evaluator CLIP's text-text cosine only)")
        return None
    try:
        return SentenceTransformer(name, device=None if device == "auto" else device)
    except Exception as err:  # noqa: BLE001  (any loader failure is the same: this name cannot be used offline)
        from image2prompt.errors import one_line

        raise Failure(f"cannot load sentence model {name!r}: {one_line(err)}") from None


def _eval_similarities(ev: Any, ev_feats: Sequence[Any], rows: dict[str, list[str | None]]
                       ) -> dict[str, list[float | None]]:
    """Per row name, the evaluator similarity of each image's text (None where there is none)."""
    names = list(rows)
    out: dict[str, list[float | None]] = {name: [] for name in names}
    for i, f in enumerate(ev_feats):
        texts = [(name, rows[name][i]) for name in names if rows[name][i]]
        sims = ev.similarity(f, [t for _, t in texts])
        got = {name: float(s) for (name, _), s in zip(texts, sims)}
        for name in names:
            out[name].append(got.get(name))
    return out


def _text_similarities(encode: Callable[[list[str]], list[np.ndarray]], trues: list[str],
                       rows: dict[str, list[str | None]]) -> dict[str, list[float | None]]:
    """Per row name, the cosine of each text to its image's true prompt (mean over encoders)."""
    out: dict[str, list[float | None]] = {}
    for name, texts in rows.items():
        idx = [i for i, t in enumerate(texts) if t]
        vals: list[float | None] = [None] * len(texts)
        if idx:
            pairs = [texts[i] for i in idx] + [trues[i] for i in idx]
            cos = np.mean([_rows_cosine(e[: len(idx)], e[len(idx):]) for e in encode(pairs)], axis=0)
            for i, c in zip(idx, cos):
                vals[i] = float(np.clip(c, -1.0, 1.0))
        out[name] = vals
    return out


# -- output ------------------------------------------------------------------------------
def _ci(v: dict[str, Any] | None, digits: int = 3) -> str:
    if not v or v.get("stat") is None or math.isnan(v["stat"]):
        return "-"
    return f"{v['stat']:.{digits}f} [{v['low']:.{digits}f}, {v['high']:.{digits}f}]"


def markdown(report: dict[str, Any]) -> str:
    c = report["config"]
    sentence = c["sentence_model"] is not None
    caption = "true prompt up to its first comma" if c["caption_from_prompt"] else (c["caption_model"] or "none")
    lines = [
        f"Search CLIP `{c['clip']}`, evaluator CLIP `{c['eval_clip']}`"
        + ("" if c["held_out"] else " (NOT held out: the same model)")
        + f", caption: {caption}, {report['images']['used']} images"
        + (f" ({len(report['images']['skipped'])} skipped)" if report["images"]["skipped"] else "")
        + ". 95% bootstrap intervals over images.", "",
    ]
    headers = ["row", "eval similarity", "ours / true", "search similarity", "text sim (eval CLIP)"]
    if sentence:
        headers.append(f"text sim ({c['sentence_model']})")
    headers += ["tokens", "s / image"]
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    labels = {"true": "true prompt (reference)", "shuffled": "another image's true prompt", "caption": "caption only"}
    named = [(labels[k], v, False) for k, v in report["reference"].items()]
    named += [(f"**{m}**", v, True) for m, v in report["modes"].items()]
    for label, f, is_mode in named:
        cells = [label, _ci(f["eval_similarity"]), "1" if label.startswith("true") else _ci(f["ratio_to_true"]),
                 _ci(f.get("search_similarity")) if is_mode else "-", _ci(f["text_similarity_clip"])]
        if sentence:
            cells.append(_ci(f["text_similarity_sentence"]))
        cells += [_ci(f["tokens"], 1), f"{f['seconds_per_image']:.3f}" if is_mode else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    diff = report["reference"]["shuffled"].get("true_minus_shuffled")
    if diff:
        lines += ["", f"True prompt minus another image's true prompt (eval similarity, paired): {_ci(diff)}."]
    t = report["timing"]
    lines.append(f"Load {t['load_s']:.1f} s, vocabulary tables {t['prepare_s']:.1f} s, "
                 f"encoding {t['encode_s_per_image']:.3f} s per image (not in s / image).")
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    """NaN and infinities as null, so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="See the module docstring and docs/quality.md for what the figures mean.")
    p.add_argument("folder", nargs="?", type=Path, help="images with sidecar .txt prompts of the same stem")
    p.add_argument("--pairs", type=Path, metavar="FILE", help=".jsonl or .csv with columns image, prompt")
    p.add_argument("--clip", default=DEFAULT_CLIP, metavar="NAME", help=f"search CLIP (default {DEFAULT_CLIP})")
    p.add_argument("--eval-clip", default=DEFAULT_EVAL_CLIP, metavar="NAME",
                   help=f"held-out evaluator CLIP (default {DEFAULT_EVAL_CLIP})")
    p.add_argument("--caption-model", default="auto", metavar="NAME", help="captioner: auto, none, or a name")
    p.add_argument("--caption-from-prompt", action="store_true",
                   help="caption = the true prompt up to its first comma; no captioner is loaded "
                        "(inflates text similarity: for testing the search only)")
    p.add_argument("--vocab", action="append", default=[], metavar="PATH", help="vocabulary pack folder")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES), help="comma-separated modes")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="use the first N readable pairs")
    p.add_argument("--sentence-model", default=None, metavar="NAME_OR_DIR",
                   help="sentence-transformers model for text similarity (when installed)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the full report here")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="table embedding cache (default: a fresh temporary folder)")
    args = p.parse_args(argv)
    if (args.folder is None) == (args.pairs is None):
        p.error("give a FOLDER or --pairs FILE (one of them)")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    from image2prompt.errors import Image2PromptError, one_line

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    captioner = args.caption_model
    if args.caption_from_prompt and captioner.strip().lower() not in ("auto", "none"):
        log(f"note: --caption-from-prompt: the captioner {captioner!r} is not loaded")
    try:
        if not modes:
            raise Failure("--modes is empty")
        pairs = read_pairs_file(args.pairs) if args.pairs else discover_pairs(args.folder, log)
        report = evaluate(pairs, clip=args.clip, eval_clip=args.eval_clip,
                          caption_model=None if captioner.strip().lower() == "none" else captioner,
                          use_prompt_caption=args.caption_from_prompt, vocab=args.vocab, modes=modes,
                          device=args.device, precision=args.precision, limit=args.limit,
                          cache_dir=args.cache_dir, sentence_model=args.sentence_model, log=log)
    except (Failure, Image2PromptError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    print(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(_json_safe(report), indent=1, ensure_ascii=False) + "\n",
                                   encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
