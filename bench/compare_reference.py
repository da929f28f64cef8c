#!/usr/bin/env python
"""Compare image2prompt with the reference clip-interrogator: speed, text tokens, memory, identical prompts.

Both implementations get the same random-weight open_clip model (ViT-B/32 and/or
ViT-L/14 tower sizes, fixed seed), the same vocabulary sample (drawn from the
installed clip-interrogator lists), the same synthetic images and the same
captions, on the same device and precision. Random weights give valid speed and
equivalence numbers (the work done does not depend on the weights' values), but
say nothing about prompt quality.

Every implementation+mode runs in its own fresh Python process (this script
re-invoked with a hidden ``--worker`` flag), so the reported peak RSS belongs to
that implementation alone. Tables are built (or read from a per-run cache)
before timing, and one untimed warm-up image precedes the timed ones.

Then the time to build the vocabulary's embedding tables from scratch is
measured at ViT-B/32 size: the full classic vocabulary (~112k labels) by
default, or a deterministic sample (``--table-sample N``).

Examples:
  python bench/compare_reference.py --quick
  python bench/compare_reference.py --sizes b32,l14 --images 2 --candidates 64 --candidates-l14 32 \
      --vocab-size 300 --table-sample 1000
  python bench/compare_reference.py --device cuda --markdown-out .bench-out/gpu.md
  python bench/compare_reference.py --full-vocab --sizes b32,l14 --modes fast,classic --skip-tables

With --full-vocab (or --shared-tables) the per-image runs never pay the reference's
table build: image2prompt builds the tables once (kept under OUT_DIR/shared-tables) and
the reference is handed copies under its own cache-file names, expanded to its raw
list's layout (blank lines and repeats kept) where that differs from ours; the
reference worker refuses to start if it would embed any table itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CAPTIONS,
    REPO_ROOT,
    SIZES,
    code_version,
    command_line,
    ensure_models,
    machine_info,
    make_images,
    markdown_table,
    offline_env,
    peak_rss_mb,
    run_worker,
    table_label_count,
    write_vocab_sample,
)

NEAR_TIE = 1e-4
MODES = ("fast", "classic", "best", "negative")


# ============================================================================
# workers (run in a fresh process each)
# ============================================================================
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _load_reference_model(model_dir: str, device: str):
    import open_clip

    precision = "fp16" if device.startswith("cuda") else "fp32"  # what the reference itself would load
    model, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{model_dir}", precision=precision, device=device)
    model.eval()
    counter = [0]
    orig = model.encode_text

    def counted(text, normalize: bool = False):
        counter[0] += int(text.numel())
        return orig(text, normalize=normalize)

    model.encode_text = counted
    return model, preprocess, counter


def _reference_interrogator(spec: dict, data_path: str, chunk_size: int, require_cached: bool = False):
    """The reference Interrogator; with ``require_cached`` every table must load from ``cache_dir``.

    Returns (interrogator, token counter, construction seconds, {table: cache hit}).
    """
    import clip_interrogator as reference
    from clip_interrogator import clip_interrogator as ref_module

    hits: dict[str, bool] = {}
    orig_load = ref_module.LabelTable._load_cached

    def load_cached(table, desc, hash_, sanitized_name):
        ok = orig_load(table, desc, hash_, sanitized_name)
        if desc is not None:
            hits[desc] = bool(ok) and len(table.embeds) == len(table.labels)
            if require_cached and not hits[desc]:
                # Fail now rather than let the reference embed the table itself (hours on a CPU).
                raise RuntimeError(f"the reference did not accept the shared cache file for table {desc!r} "
                                   f"(sha256 of its {len(table.labels)} labels {hash_[:12]}...)")
        return ok

    ref_module.LabelTable._load_cached = load_cached
    model, preprocess, counter = _load_reference_model(spec["model_dir"], spec["device"])
    cfg = reference.Config(
        clip_model_name=f"{spec['open_clip_name']}/bench", caption_model_name=None, device=spec["device"],
        quiet=True, download_cache=False, cache_path=spec["cache_dir"], data_path=data_path,
        chunk_size=chunk_size, flavor_intermediate_count=spec.get("candidates", 2048),
    )
    cfg.clip_model, cfg.clip_preprocess = model, preprocess
    t0 = time.perf_counter()
    ci = reference.Interrogator(cfg)  # builds (or reads from cache_path) every table
    _sync(spec["device"])
    secs = time.perf_counter() - t0
    ref_module.LabelTable._load_cached = orig_load
    return ci, counter, secs, hits


def _our_settings(spec: dict, **changes):
    from image2prompt import SearchSettings

    # the reference's behaviour (no relevance floor): parity and speed are against its prompts
    return SearchSettings.reference(candidates=spec.get("candidates", 2048), **changes)


def _our_interrogator(spec: dict, pack):
    from image2prompt import Config, Interrogator
    from image2prompt.cache import EmbeddingCache
    from image2prompt.models.clip import load_clip

    enc = load_clip(f"local-dir:{spec['model_dir']}", device=spec["device"], precision=spec["precision"])
    ours = Interrogator(enc, None, pack, EmbeddingCache(spec["cache_dir"], download=False),
                        Config(caption_model=None, device=spec["device"], precision=spec["precision"]))
    t0 = time.perf_counter()
    ours.prepare()
    _sync(spec["device"])
    return ours, enc, time.perf_counter() - t0


REF_TABLES = ("artists", "flavors", "mediums", "movements", "trendings", "negative")
CLASSIC_SLOTS = (("mediums", 1), ("artists", 1), ("trendings", 1), ("movements", 1), ("flavors", 3))


def _reference_picks(ci, img, mode: str) -> list[list[str]]:
    """[[category, label], ...] in prompt order, as the reference's own rank() returns them."""
    from clip_interrogator.clip_interrogator import _merge_tables

    feats = ci.image_to_features(img)
    if mode == "fast":
        merged = _merge_tables([ci.artists, ci.flavors, ci.mediums, ci.movements, ci.trendings], ci)
        return [["merged", label] for label in merged.rank(feats, 32)]
    return [[cat, label] for cat, k in CLASSIC_SLOTS for label in getattr(ci, cat).rank(feats, k)]


def _phrase_diffs(ours, enc, images, ref_picks) -> list[list[dict]]:
    """Per image, every slot (all 32 fast picks or the 7 classic ones, including those the token limit
    cuts from the prompt) where our pick differs from the reference's. Our picks are the exact top-k of
    OUR table embeddings (what image2prompt ranks); both labels are scored with those embeddings (a label
    not in our tables, such as the reference's blank line, is encoded with our encoder)."""
    import numpy as np

    index = ours.indexes[0]
    pack = index.pack
    rows = {c: {lab: i for i, lab in enumerate(pack[c].labels)} for c in pack.categories()}

    def score(label: str, cat: str, f) -> float:
        for c in ([cat] if cat in rows else pack.merged_categories()):
            if label in rows[c]:
                return float(index.embeds(c)[rows[c][label]].astype(np.float32) @ f)
        return float(enc.encode_texts([label])[0] @ f)

    def top(scores, k: int) -> list[int]:
        return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]

    out = []
    for img, theirs in zip(images, ref_picks):
        f = ours.image_features([img])[0][0].astype(np.float32)
        if theirs and theirs[0][0] == "merged":
            view = index.merged()
            every = np.concatenate([index.embeds(c).astype(np.float32) @ f for c in pack.merged_categories()])
            mine = [(view.labels[i], view.categories[i]) for i in top(every[view.rows], len(theirs))]
        else:
            mine = []
            for cat, k in CLASSIC_SLOTS:
                labels = pack[cat].labels
                mine += [(labels[i], cat) for i in top(index.embeds(cat).astype(np.float32) @ f, k)]
        diffs, seen_ref = [], set()
        for slot, ((t_cat, t_lab), (m_lab, m_cat)) in enumerate(zip(theirs, mine)):
            repeat = t_lab in seen_ref
            seen_ref.add(t_lab)
            if t_lab == m_lab:
                continue
            s_ref, s_ours = score(t_lab, t_cat, f), score(m_lab, m_cat, f)
            diffs.append({"slot": slot, "category": m_cat, "ref": t_lab, "ours": m_lab, "ref_score": s_ref,
                          "ours_score": s_ours, "ours_ge_ref": s_ours >= s_ref,
                          "ref_note": "blank line" if t_lab == "" else ("repeat" if repeat else "")})
        if len(theirs) != len(mine):
            diffs.append({"slot": min(len(theirs), len(mine)), "category": "", "ref": f"{len(theirs)} picks",
                          "ours": f"{len(mine)} picks", "ref_score": float("nan"), "ours_score": float("nan"),
                          "ours_ge_ref": len(mine) >= len(theirs), "ref_note": "different number of picks"})
        out.append(diffs)
    return out


def worker_images(spec: dict) -> dict:
    """Interrogate the images in one mode with one implementation; time each image."""
    impl, mode, n = spec["impl"], spec["mode"], spec["images"]
    images = make_images(n + 1)
    warm, timed = images[n], images[:n]
    caps = [CAPTIONS[i % len(CAPTIONS)] for i in range(n + 1)]
    warm_mode = mode if mode in ("fast", "classic") else "fast"
    out: dict = {"impl": impl, "mode": mode, "warmup_mode": warm_mode}

    if impl == "reference":
        shared = bool(spec.get("shared_tables"))
        ci, counter, build_s, hits = _reference_interrogator(spec, spec["vocab_dir"], spec["chunk_size"],
                                                             require_cached=shared)
        tables = {t: getattr(ci, t) for t in REF_TABLES}
        out["reference_tables"] = {t: {"labels": len(tab.labels), "rows": len(tab.embeds),
                                       "from_cache": hits.get(t, False)} for t, tab in tables.items()}
        out["construction_tokens"] = counter[0]  # 0 when every table was read from the cache
        out["chunk_size"] = spec["chunk_size"]

        def run(img, m, cap):
            if m == "best":
                return ci.interrogate(img, caption=cap)
            if m == "classic":
                return ci.interrogate_classic(img, caption=cap)
            if m == "fast":
                return ci.interrogate_fast(img, caption=cap)
            return ci.interrogate_negative(img)

        def tokens():
            return counter[0]
    else:
        from image2prompt.vocab import load_folder_pack

        ours, enc, build_s = _our_interrogator(spec, load_folder_pack(spec["vocab_dir"]))

        def run(img, m, cap):
            return ours.interrogate(img, m, caption=None if m == "negative" else cap,
                                    settings=_our_settings(spec)).prompt

        def tokens():
            return enc.tokens_encoded

    out["table_seconds"] = build_s
    out["loadavg_before"] = os.getloadavg()[0]
    run(warm, warm_mode, caps[n])
    _sync(spec["device"])
    prompts, secs, toks = [], [], []
    for img, cap in zip(timed, caps):
        t_before = tokens()
        t0 = time.perf_counter()
        prompts.append(run(img, mode, cap))
        _sync(spec["device"])
        secs.append(time.perf_counter() - t0)
        toks.append(tokens() - t_before)
    out.update(prompts=prompts, seconds=secs, tokens=toks, peak_rss_mb=peak_rss_mb(),
               loadavg_after=os.getloadavg()[0])

    if impl == "ours" and mode in ("fast", "classic"):
        # The same again without scoring the final prompt (SearchSettings.score_prompt=False, what the CLI
        # does for text output): the reference does not compute that similarity, so this is equal work.
        quiet = _our_settings(spec, score_prompt=False)
        ours.interrogate(warm, mode, caption=caps[n], settings=quiet)
        u_prompts, u_secs, u_toks = [], [], []
        for img, cap in zip(timed, caps):
            t_before = tokens()
            t0 = time.perf_counter()
            u_prompts.append(ours.interrogate(img, mode, caption=cap, settings=quiet).prompt)
            _sync(spec["device"])
            u_secs.append(time.perf_counter() - t0)
            u_toks.append(tokens() - t_before)
        out.update(unscored_seconds=u_secs, unscored_tokens=u_toks, unscored_same=u_prompts == prompts)

    if impl == "reference" and mode in ("fast", "classic"):
        # Untimed, after the RSS reading: the phrases the reference picked, slot by slot, with its own
        # (chunked, when a table is larger than chunk_size) ranking.
        out["picks"] = [_reference_picks(ci, img, mode) for img in timed]
    if impl == "ours" and spec.get("reference_picks"):
        out["phrase_diffs"] = _phrase_diffs(ours, enc, timed, spec["reference_picks"])

    ref_prompts = spec.get("reference_prompts")
    if impl == "ours" and ref_prompts:
        # For prompts that differ, score both with OUR encoder (untimed, after the RSS reading).
        diffs: list[float | None] = []
        for _i, (img, mine, theirs) in enumerate(zip(timed, prompts, ref_prompts)):
            if mine == theirs or theirs is None:
                diffs.append(None)
                continue
            feats = ours.image_features([img])
            sims = ours.similarity([f[0] for f in feats], [theirs, mine])
            diffs.append(float(sims[1] - sims[0]))
        out["sim_diff_ours_minus_ref"] = diffs
    return out


def worker_tables(spec: dict) -> dict:
    """Build every embedding table from scratch (empty cache) and time it."""
    if spec["impl"] == "reference":
        _, counter, secs, _ = _reference_interrogator(spec, spec["data_dir"], spec["chunk_size"])
        tokens = counter[0]
        labels = None  # the reference keeps blank lines and duplicates; its own count is not reported
    else:
        from image2prompt.vocab import load_classic_pack, load_folder_pack

        pack = load_classic_pack() if spec["full"] else load_folder_pack(spec["data_dir"])
        _ours, enc, secs = _our_interrogator(spec, pack)
        tokens = enc.tokens_encoded
        labels = sum(len(pack[c].labels) for c in pack.categories())
    return {"impl": spec["impl"], "seconds": secs, "tokens": tokens, "labels": labels,
            "peak_rss_mb": peak_rss_mb()}


def _reference_raw_list(vocab_dir: Path, table: str) -> list[str]:
    """The list the reference builds (and hashes) for ``table``: blank lines and repeats kept."""
    from image2prompt.vocab import TRENDING_SITES, expand_artists, expand_trending
    from image2prompt.vocab.packs import read_list

    if table == "trendings":
        return expand_trending(TRENDING_SITES)
    if table == "artists":
        return expand_artists(read_list(vocab_dir / "artists.txt"))
    return read_list(vocab_dir / f"{table}.txt")


def worker_share(spec: dict) -> dict:
    """Build (or load) our tables once, then write them under the reference's cache-file names.

    The reference hashes its raw list (blank lines and repeats kept); where that differs from
    our cleaned table, the file is expanded to the raw layout: row i holds our embedding of raw
    label i (the blank label is encoded with our encoder) and the hash is the raw list's.
    """
    import numpy as np
    from safetensors.numpy import save_file

    from image2prompt.cache.embeddings import hash_codes, sanitize_model_name
    from image2prompt.vocab import labels_sha256, load_folder_pack

    vocab_dir = Path(spec["vocab_dir"])
    pack = load_folder_pack(vocab_dir)
    ours, enc, secs = _our_interrogator(spec, pack)  # spec["cache_dir"]: our persistent cache
    build_tokens = enc.tokens_encoded
    index = ours.indexes[0]
    ref_dir = Path(spec["ref_cache_dir"])
    ref_dir.mkdir(parents=True, exist_ok=True)
    ref_name = sanitize_model_name(spec["ref_model_name"])
    tables = {}
    for name in REF_TABLES:
        table = pack[name]
        raw = _reference_raw_list(vocab_dir, name)
        raw_hash = labels_sha256(raw)
        expect = table.source.sha256 if table.source is not None else table.sha256
        if raw_hash != expect:
            raise RuntimeError(f"{name}: the reference's raw list does not hash as our table's source records")
        embeds = index.embeds(name)
        dest = ref_dir / f"{ref_name}_{name}.safetensors"
        if raw == list(table.labels):
            shutil.copyfile(ours.cache.path_for(enc.cache_key, table), dest)
            how = "copied"
        else:
            row_of = {lab: i for i, lab in enumerate(table.labels)}
            missing = sorted({lab for lab in raw if lab not in row_of})
            extra = enc.encode_texts(missing).astype(np.float16) if missing else None
            miss_of = {lab: i for i, lab in enumerate(missing)}
            out = np.empty((len(raw), embeds.shape[1]), dtype=np.float16)
            for i, lab in enumerate(raw):
                out[i] = embeds[row_of[lab]] if lab in row_of else extra[miss_of[lab]]
            save_file({"embeds": out, "hash": hash_codes(raw_hash)}, str(dest))
            how = "expanded to the raw layout"
        tables[name] = {"ours": len(table), "raw": len(raw), "blank": sum(1 for lab in raw if not lab),
                        "repeats": sum(1 for lab in raw if lab) - len({lab for lab in raw if lab}), "file": dest.name, "how": how}
    return {"seconds": secs, "tokens": build_tokens, "tables": tables}


def worker_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    warnings.simplefilter("ignore")
    import torch

    torch.manual_seed(0)
    version = code_version()  # the code this process imports (others edit the checkout concurrently)
    kinds = {"tables": worker_tables, "share": worker_share, "images": worker_images}
    result = kinds[spec["kind"]](spec)
    result["code_version"] = version
    Path(spec["result_path"]).write_text(json.dumps(result, indent=1))


# ============================================================================
# driver
# ============================================================================
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Examples:" + __doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sizes", default="b32,l14", help="model tower sizes, comma-separated: b32, l14 (default: %(default)s)")
    p.add_argument("--modes", default="fast,classic,best",
                   help="modes, comma-separated: fast, classic, best, negative (default: %(default)s)")
    p.add_argument("--images", type=int, default=3, help="timed images per size and mode (default: %(default)s)")
    p.add_argument("--candidates", type=int, default=2048,
                   help="best/negative candidate pool: the reference's flavor_intermediate_count and our "
                        "SearchSettings.candidates (default: %(default)s)")
    p.add_argument("--candidates-l14", type=int, default=None,
                   help="candidate pool for the l14 size only (default: --candidates)")
    p.add_argument("--vocab-size", type=_count_or_all, default=None,
                   help="flavors in the vocabulary sample used for per-image runs, or 'all' "
                        "(default: 2000; all with --full-vocab)")
    p.add_argument("--artists", type=_count_or_all, default=None,
                   help="artists in that sample (each gives 'by X' and 'inspired by X'), or 'all' "
                        "(default: 200; all with --full-vocab)")
    p.add_argument("--full-vocab", action="store_true",
                   help="per-image runs use the full classic vocabulary (~112k labels: the reference's own data "
                        "folder, raw, with its blank line and repeats) instead of a sample; implies "
                        "--shared-tables and the reference's default --ref-chunk-size 2048")
    p.add_argument("--shared-tables", action=argparse.BooleanOptionalAction, default=None,
                   help="per-image runs: build our tables once (kept under OUT_DIR/shared-tables) and give the "
                        "reference copies under its own cache-file names, so it loads them instead of embedding "
                        "the vocabulary itself (default: on with the full vocabulary, off for a sample)")
    p.add_argument("--ref-chunk-size", type=_count_or_exact, default=None,
                   help="the reference's chunk_size in per-image runs: a number, or 'exact' (larger than any "
                        "table, so its ranking is exact). Default: 2048 (the reference's default, what users run; "
                        "it ranks tables larger than that per chunk) with the full vocabulary, else exact")
    p.add_argument("--sample-quirks", action="store_true",
                   help="put one blank line and one repeated flavor into the sample's flavors.txt, as in the real "
                        "list, so the reference's raw list differs from ours (exercises --shared-tables' raw layout)")
    p.add_argument("--table-sample", type=int, default=None, metavar="N",
                   help="time table building on a deterministic sample of N flavors (artists sampled at the "
                        "same fraction; mediums, movements, negative in full) instead of the full classic "
                        "vocabulary (default: full)")
    p.add_argument("--ref-table-sample", type=int, default=None, metavar="N",
                   help="with the full vocabulary: time the reference's table building on a sample of N "
                        "flavors and scale its time to the full row count (its cost per row is constant: "
                        "every label is padded to 77 tokens); ours is timed on the full vocabulary")
    p.add_argument("--skip-tables", action="store_true", help="skip the table-building comparison")
    p.add_argument("--skip-images", action="store_true", help="skip the per-image comparison")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    p.add_argument("--precision", default="auto",
                   help="our precision: auto (fp16 on cuda, fp32 on cpu, as the reference), fp32, fp16, bf16 "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for the model weights and vocabulary sample (default: %(default)s)")
    p.add_argument("--out-dir", default=str(REPO_ROOT / ".bench-out"),
                   help="vocabulary samples, caches, logs and raw JSON go here (default: .bench-out)")
    p.add_argument("--models-dir", default=None,
                   help="where the random-weight models are built or reused (default: OUT_DIR/models)")
    p.add_argument("--markdown-out", default=None, metavar="FILE", help="also write the Markdown report to FILE")
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: sizes b32, 1 image, 64 candidates, vocab-size 300, table-sample 2000")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.images, args.candidates, args.vocab_size, args.table_sample = "b32", 1, 64, 300, 2000
        args.candidates_l14 = None
    full_by_size = args.vocab_size == "all" and args.artists == "all"
    args.full_vocab = args.full_vocab or full_by_size
    if args.full_vocab:
        if args.sample_quirks:
            p.error("--sample-quirks applies to a sample, not to --full-vocab")
        args.vocab_size = args.artists = None
    else:
        args.vocab_size = {None: 2000, "all": None}.get(args.vocab_size, args.vocab_size)
        args.artists = {None: 200, "all": None}.get(args.artists, args.artists)
    if args.shared_tables is None:
        args.shared_tables = args.full_vocab
    if args.ref_chunk_size is None:
        args.ref_chunk_size = 2048 if args.full_vocab else "exact"
    args.size_list = [s.strip() for s in args.sizes.split(",") if s.strip()]
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    for s in args.size_list:
        if s not in SIZES:
            p.error(f"unknown size {s!r}; choose from {', '.join(SIZES)}")
    for m in args.mode_list:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    if args.images < 1:
        p.error("--images must be at least 1")
    return args


def _count_or_all(v: str):
    return "all" if v.strip().lower() == "all" else int(v)


def _count_or_exact(v: str):
    return "exact" if v.strip().lower() == "exact" else int(v)


def _fmt_s(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    offline_env()
    if args.worker:
        worker_main(args.worker)
        return 0

    from image2prompt.vocab import reference_data_dir

    script = Path(__file__).resolve()
    out_dir = Path(args.out_dir).resolve()
    models_dir = Path(args.models_dir).resolve() if args.models_dir else out_dir / "models"
    run_dir = out_dir / "runs" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)
    data_dir = reference_data_dir()
    log(f"output: {run_dir}")

    sizes_needed = list(dict.fromkeys(args.size_list + ([] if args.skip_tables else ["b32"])))
    models = ensure_models(models_dir, sizes_needed, seed=args.seed, log=log)

    max_loads: list[float] = []
    rows, mismatches, raw = [], [], {"args": vars(args), "images": [], "tables": []}
    vocab_note = table_note = ""

    # -- per-image comparison ----------------------------------------------------
    share_notes: list[str] = []
    phrase_notes: list[str] = []
    if not args.skip_images:
        if args.full_vocab:
            from image2prompt.vocab import load_folder_pack

            vocab_dir = data_dir
            pack = load_folder_pack(vocab_dir)
            n_labels = sum(len(pack[c]) for c in pack.categories())
            vocab_note = ("full classic vocabulary (" + ", ".join(f"{len(pack[c]):,} {c}" for c in pack.categories())
                          + f" = {n_labels:,} labels after dropping blanks and repeats) from {data_dir}")
        else:
            quirks = "-q" if args.sample_quirks else ""
            vocab_dir = out_dir / (f"vocab-f{args.vocab_size or 'all'}-a{args.artists or 'all'}-s{args.seed}{quirks}")
            counts = write_vocab_sample(vocab_dir, data_dir, flavors=args.vocab_size, artists=args.artists,
                                        seed=args.seed, raw_quirks=args.sample_quirks)
            n_labels = table_label_count(counts)
            vocab_note = (f"vocabulary sample ({vocab_dir.name}): {counts['flavors']} flavors, {counts['artists']} "
                          f"artists (x2: 'by', 'inspired by'), {counts['mediums']} mediums, {counts['movements']} "
                          f"movements, 72 trending, {counts['negative']} negative = {n_labels} labels"
                          + (" (flavors.txt also has a blank line and a repeated flavor, as the real list has)"
                             if args.sample_quirks else ""))
        log(vocab_note)
        # exact: one chunk per table, so the reference ranks exactly
        chunk_size = max(2048, n_labels + 1) if args.ref_chunk_size == "exact" else args.ref_chunk_size
        chunk_note = ("larger than any table (its ranking is exact)" if args.ref_chunk_size == "exact" else
                      f"{chunk_size} (tables larger than that are ranked per chunk, approximately)")
        for size in args.size_list:
            candidates = args.candidates_l14 if (size == "l14" and args.candidates_l14) else args.candidates
            cache_root = run_dir / "cache" / size
            ref_cache, ours_cache = cache_root / "reference", cache_root / "ours"
            if args.shared_tables:
                shared = out_dir / "shared-tables"
                ours_cache = shared / "ours"  # keyed by the model folder's fingerprint: never stale
                ref_cache = shared / "reference" / f"{size}-seed{args.seed}-{vocab_dir.name}"
                log(f"{size}: our tables, shared with the reference ({ours_cache}):")
                share = run_worker(script, {
                    "kind": "share", "tag": f"{size}-share", "model_dir": str(models[size]),
                    "vocab_dir": str(vocab_dir), "device": args.device, "precision": args.precision,
                    "cache_dir": str(ours_cache), "ref_cache_dir": str(ref_cache),
                    "ref_model_name": f"{SIZES[size][1]}/bench"}, run_dir, log)
                raw["shared_tables"] = dict(raw.get("shared_tables", {}), **{size: share})
                if "error" in share:
                    log(f"  [{size}-share] failed: skipping {size}")
                    share_notes.append(f"- {size}: building or sharing the tables FAILED: {share['error']}")
                    continue
                log(f"  ours: {share['seconds']:.1f} s, {share['tokens']:,} tokens (0 when read from our cache)")
                parts = [f"{t} {d['raw']:,} rows" + (f" ({d['blank']} blank, {d['repeats']} repeats; "
                                                     f"{d['how']})" if d["how"] != "copied" else "")
                         for t, d in share["tables"].items()]
                share_notes.append(f"- {size}: our tables took {share['seconds']:.1f} s ({share['tokens']:,} "
                                   f"tokens; 0 = read from our cache) and were written for the reference as: "
                                   + "; ".join(parts))
            for mode in args.mode_list:
                base = {"kind": "images", "size": size, "mode": mode, "model_dir": str(models[size]),
                        "open_clip_name": SIZES[size][1], "vocab_dir": str(vocab_dir), "images": args.images,
                        "candidates": candidates, "device": args.device, "precision": args.precision,
                        "chunk_size": chunk_size}
                log(f"{size} {mode} (candidates {candidates}):")
                ref = run_worker(script, dict(base, impl="reference", tag=f"{size}-{mode}-reference",
                                              cache_dir=str(ref_cache), shared_tables=args.shared_tables),
                                 run_dir, log)
                ours = run_worker(script, dict(base, impl="ours", tag=f"{size}-{mode}-ours",
                                               cache_dir=str(ours_cache), reference_prompts=ref.get("prompts"),
                                               reference_picks=ref.get("picks")), run_dir, log)
                raw["images"].append({"size": size, "mode": mode, "candidates": candidates,
                                      "reference": ref, "ours": ours})
                if args.shared_tables and "reference_tables" in ref:
                    rt = ref["reference_tables"]
                    ok = all(d["from_cache"] and d["rows"] == d["labels"] for d in rt.values()) \
                        and ref["construction_tokens"] == 0
                    share_notes.append(
                        f"- {size} {mode}: reference {'LOADED' if ok else 'did NOT load'} the shared files: "
                        + ", ".join(f"{t} {d['rows']:,}/{d['labels']:,} rows"
                                    + ("" if d["from_cache"] else " NOT from cache") for t, d in rt.items())
                        + f"; {ref['construction_tokens']:,} text tokens encoded while building")
                    log(share_notes[-1][2:])
                for i, diffs in enumerate(ours.get("phrase_diffs") or []):
                    if not diffs:
                        continue
                    ge = sum(d["ours_ge_ref"] for d in diffs)
                    phrase_notes.append(f"- {size} {mode} image {i}: {len(diffs)} slot(s) differ; our phrase "
                                        f"scores >= the reference's in {ge} of them")
                    for d in diffs[:5]:
                        note = f" [{d['ref_note']}]" if d["ref_note"] else ""
                        phrase_notes.append(
                            f"  - slot {d['slot']} ({d['category']}): ref `{d['ref']}`{note} {d['ref_score']:.5f}"
                            f" vs ours `{d['ours']}` {d['ours_score']:.5f}")
                    if len(diffs) > 5:
                        phrase_notes.append(f"  - ... {len(diffs) - 5} more in raw.json")
                ref_s = _mean(ref.get("seconds", []))
                ours_s = _mean(ours.get("seconds", []))
                for name, r in (("reference", ref), ("image2prompt", ours)):
                    if "error" in r:
                        rows.append([size, mode, name, "failed", "", "", "", ""])
                        continue
                    s = _mean(r["seconds"])
                    ident = speed = "—"
                    if name == "image2prompt" and "error" not in ref:
                        same = sum(a == b for a, b in zip(r["prompts"], ref["prompts"]))
                        diffs = [d for d in r.get("sim_diff_ours_minus_ref", []) if d is not None]
                        ties = sum(abs(d) <= NEAR_TIE for d in diffs)
                        ident = f"{same}/{len(r['prompts'])}" + (f" ({ties} near-tie)" if ties else "")
                        speed = f"{ref_s / ours_s:.1f}x" if ours_s > 0 else "—"
                        for i, (a, b) in enumerate(zip(ref["prompts"], r["prompts"])):
                            if a != b:
                                d = r.get("sim_diff_ours_minus_ref", [None] * (i + 1))[i]
                                mismatches.append((size, mode, i, a, b, d))
                    rows.append([size, mode, name, _fmt_s(s), f"{_mean(r['tokens']):,.0f}",
                                 f"{r['peak_rss_mb']:,.0f}", ident, speed])
                    if name == "image2prompt" and r.get("unscored_seconds"):
                        u = _mean(r["unscored_seconds"])
                        rows.append([size, mode, "image2prompt, unscored", _fmt_s(u),
                                     f"{_mean(r['unscored_tokens']):,.0f}", "—",
                                     "same prompts" if r["unscored_same"] else "PROMPTS DIFFER",
                                     f"{ref_s / u:.1f}x" if u > 0 and "error" not in ref else "—"])
                loads = [r.get(k) for r in (ref, ours) for k in ("loadavg_before", "loadavg_after")]
                max_load = max((x for x in loads if x is not None), default=0.0)
                max_loads.append(max_load)
                log(f"  reference {ref_s:.2f} s/image, ours {ours_s:.2f} s/image (max 1-min load {max_load:.1f})")

    # -- table building ----------------------------------------------------------
    table_rows = []
    if not args.skip_tables:
        full = args.table_sample is None
        if full:
            tdir = data_dir
            table_note = f"full classic vocabulary from {data_dir} (the reference reads the raw lists)"
        else:
            n_flav = len([x for x in open(data_dir / "flavors.txt", encoding="utf-8", errors="replace") if x.strip()])
            n_art = len([x for x in open(data_dir / "artists.txt", encoding="utf-8", errors="replace") if x.strip()])
            frac = min(1.0, args.table_sample / max(1, n_flav))
            tdir = out_dir / f"table-vocab-f{args.table_sample}-s{args.seed}"
            tc = write_vocab_sample(tdir, data_dir, flavors=args.table_sample,
                                    artists=max(1, round(frac * n_art)), seed=args.seed)
            table_note = (f"sample ({tdir.name}): {tc['flavors']} flavors, {tc['artists']} artists "
                          f"({frac:.1%} of each), all mediums/movements/negative = {table_label_count(tc)} labels")
        log(f"table building at b32: {table_note}")
        ref_dir, ref_full = tdir, full
        if full and args.ref_table_sample:
            from image2prompt.vocab.packs import read_list

            n_flav = len(read_list(data_dir / "flavors.txt"))
            n_art = len(read_list(data_dir / "artists.txt"))
            ref_dir = out_dir / f"table-vocab-f{args.ref_table_sample}-s{args.seed}"
            write_vocab_sample(ref_dir, data_dir, flavors=args.ref_table_sample,
                               artists=max(1, round(args.ref_table_sample / n_flav * n_art)), seed=args.seed)
            ref_full = False
        res = {}
        for impl in ("reference", "ours"):
            cache = run_dir / "tables-cache" / impl
            shutil.rmtree(cache, ignore_errors=True)
            d, f = (ref_dir, ref_full) if impl == "reference" else (tdir, full)
            spec = {"kind": "tables", "impl": impl, "tag": f"tables-{impl}", "model_dir": str(models["b32"]),
                    "open_clip_name": "ViT-B-32", "data_dir": str(d), "full": f, "cache_dir": str(cache),
                    "device": args.device, "precision": args.precision, "chunk_size": 2048}
            res[impl] = run_worker(script, spec, run_dir, log)
            if "seconds" in res[impl]:
                log(f"  {impl}: {res[impl]['seconds']:.1f} s, {res[impl]['tokens']:,} tokens")
        ref_name = "reference"
        if ref_dir != tdir and "seconds" in res["reference"]:
            # Scale the sample's time to the full vocabulary's rows (77 padded tokens per row).
            r = res["reference"]
            rows_sample = r["tokens"] / 77
            rows_full = sum(len(_reference_raw_list(tdir, t)) for t in REF_TABLES)
            r.update(sample_seconds=r["seconds"], sample_rows=rows_sample, full_rows=rows_full,
                     seconds=r["seconds"] * rows_full / rows_sample, tokens=rows_full * 77)
            ref_name = f"reference (scaled from {rows_sample:,.0f} of {rows_full:,} rows: {r['sample_seconds']:.1f} s)"
            table_note += f"; the reference timed on {ref_dir.name} and scaled to the full row count"
        raw["tables"] = res
        ref, ours = res["reference"], res["ours"]
        for name, r in ((ref_name, ref), ("image2prompt", ours)):
            if "error" in r:
                table_rows.append(["b32", name, "failed", "", "", ""])
                continue
            speed = f"{ref['seconds'] / r['seconds']:.1f}x" if name == "image2prompt" and "error" not in ref else "—"
            table_rows.append(["b32", name, f"{r['seconds']:.1f}", f"{r['tokens']:,}", f"{r['peak_rss_mb']:,.0f}", speed])

    # -- report ------------------------------------------------------------------
    (run_dir / "raw.json").write_text(json.dumps(raw, indent=1, default=str))
    info = machine_info(args.device)
    lines = ["## compare_reference", "", f"Command: `{command_line()}`", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    versions = sorted({r.get("code_version", "?") for e in raw["images"] for r in (e["reference"], e["ours"])}
                      | {r.get("code_version", "?") for r in raw["tables"].values()} if raw["tables"] else
                      {r.get("code_version", "?") for e in raw["images"] for r in (e["reference"], e["ours"])})
    if versions:
        lines += [f"- image2prompt code used by the workers: {', '.join(versions)}"
                  + (" (MIXED: the checkout changed during the run)" if len(versions) > 1 else "")]
    if max_loads:
        lines += [f"- 1-min load average seen around the timed images: up to {max(max_loads):.1f} "
                  f"on {info['cores']} cores (above the core count, timings include contention)"]
    prec = args.precision if args.precision != "auto" else ("fp16" if args.device.startswith("cuda") else "fp32")
    lines += [f"- precision: ours {prec}, reference {'fp16' if args.device.startswith('cuda') else 'fp32'}"]
    if not args.skip_images:
        cands = f"{args.candidates}" + (f" ({args.candidates_l14} at l14)" if args.candidates_l14 else "")
        lines += ["", "### Per image", "",
                  f"{args.images} timed image(s) per row after one untimed warm-up image (best mode warms up with "
                  f"fast mode); candidates {cands}; {vocab_note}. "
                  f"reference chunk_size {chunk_note}. "
                  "Tables are built before timing. Peak RSS is each implementation+mode's own process "
                  "(model, tables and search). tokens/image = text-tower token positions "
                  "(the reference pads every text to 77).", ""]
        lines.append(markdown_table(["size", "mode", "impl", "s/image", "tokens/image", "peak RSS MB",
                                     "identical", "speedup (ref s / ours s)"], rows))
        if mismatches:
            lines += ["", "Prompts that differ (sim diff = ours - reference, scored by image2prompt's encoder; "
                          f"|diff| <= {NEAR_TIE:g} is a near-tie):", ""]
            for size, mode, i, a, b, d in mismatches:
                dd = "n/a" if d is None else f"{d:+.2e}" + (" near-tie" if abs(d) <= NEAR_TIE else "")
                lines += [f"- {size} {mode} image {i}: sim diff {dd}", f"  - ref:  `{a}`", f"  - ours: `{b}`"]
    if share_notes:
        lines += ["", "Shared tables (`--shared-tables`): image2prompt built the tables once and the reference "
                      "was given them under its own cache-file names, so neither embedded the vocabulary in the "
                      "timed runs:", ""] + share_notes
    if any(e["ours"].get("phrase_diffs") is not None for e in raw["images"]):
        lines += ["", "Phrase-level comparison (fast/classic): each slot where our phrase differs from the "
                      "reference's own pick (its rank(), chunked when a table exceeds chunk_size), over all 32 "
                      "fast picks or the 7 classic ones (also those the 77-token limit cuts from the prompt), both "
                      "scored with image2prompt's table embeddings:", ""]
        lines += phrase_notes or ["- none: every slot identical"]
    if not args.skip_tables:
        lines += ["", "### Table building (ViT-B/32 size, empty cache)", "", f"Vocabulary: {table_note}.",
                  "The reference encodes every label padded to 77 tokens in chunks of 2048; "
                  "image2prompt encodes without padding past each batch's longest label.", ""]
        lines.append(markdown_table(["size", "impl", "seconds", "tokens", "peak RSS MB",
                                     "speedup (ref s / ours s)"], table_rows))
    report = "\n".join(lines) + "\n"
    print(report)
    if args.markdown_out:
        Path(args.markdown_out).write_text(report)
        log(f"wrote {args.markdown_out}")
    log(f"raw results: {run_dir / 'raw.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
