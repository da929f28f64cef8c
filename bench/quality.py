"""Measure prompt quality on the toy world, where every image's factors are known.

    python bench/quality.py                              # 200 held-out images, every mode (a few minutes)
    python bench/quality.py --images 40 --modes fast,best --json /tmp/q.json
    python bench/quality.py --model /tmp/toy-clip        # another trained miniature CLIP

It loads the miniature CLIP from ``bench/toyworld/model`` through the path users
hit (``Config(clip_model="local-dir:...")``) with the world's vocabulary pack
(``bench/toyworld/vocab``), gives each image the world's true subject caption (so
the figures measure the CLIP-ranked phrases, not a captioner), and reports per
mode, each with a 95% bootstrap interval over the images:

- factor recall: the share of the image's true style factors (texture, medium,
  lighting, and artist and movement where it has them) named in the prompt;
- precision over every phrase the mode added, distractors included, and the
  number of distractor phrases per prompt;
- the final prompt's similarity, seconds per image and tokens;
- style mode's subject leakage; negative mode's similarity against a generic
  negative prompt's;
- turbo against best (similarity and speed ratios); the weak-match statistic's
  AUC between world images and abstract ones; how often the top artist
  hypothesis is right, by margin; each factor's zero-shot accuracy;
- the ceiling: the precision and recall an oracle that knows which phrases name
  which factor reaches on the same scores, the bound for any floor rule.

See docs/quality.md for the figures and what a miniature world can and cannot say.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, offline_env, timed_search
from bench.toyworld import metrics
from bench.toyworld.vocab import PACK_DIR
from bench.toyworld.world import GENERIC_NEGATIVE, Scene, render, sample_scenes, subject_caption

MODEL_DIR = REPO_ROOT / "bench" / "toyworld" / "model"
EVAL_SEED = 777  # held out: training uses bench.toyworld.train.TRAIN_SEED
ABSTRACT_SEED = 778
ALL_MODES = ("best", "turbo", "fast", "classic", "style", "negative")


def load(model: Path, cache_dir: str | None = None):
    from image2prompt import Config, Interrogator

    config = Config(clip_model=f"local-dir:{model}", caption_model=None, vocab=[str(PACK_DIR)],
                    device="cpu", cache_dir=cache_dir or tempfile.mkdtemp(prefix="i2p-quality-"),
                    download_cache=False)
    return Interrogator.load(config)


def encode(it, scenes: list[Scene]):
    images = [render(s) for s in scenes]
    return it.encode(images, [subject_caption(s) for s in scenes], sources=[str(s.seed) for s in scenes],
                     generate_captions=False)


def phrase_evidence(results, scenes, feats, it) -> dict:
    """z, support and margin of every added phrase, by what it is for its image (true, false,
    distractor): the numbers the relevance floor is chosen from (docs/confidence.md)."""
    from bench.toyworld.vocab import classify

    rows: dict[str, list[tuple[float, float, float]]] = {"true": [], "false": [], "distractor": []}
    for r, s in zip(results, scenes):
        for p in r.phrases:
            rows[classify(p.text, s)].append((float(p.z), float(p.support), float(p.margin)))
    out = {}
    for kind, vals in rows.items():
        z, sup, m = (np.array([v[k] for v in vals]) if vals else np.zeros(0) for k in range(3))
        out[kind] = {"n": len(vals), "median_z": float(np.median(z)) if z.size else None,
                     "median_support": float(np.median(sup)) if sup.size else None,
                     "median_margin": float(np.median(m)) if m.size else None,
                     "share_z_at_least": {str(t): float((z >= t).mean()) if z.size else None
                                          for t in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)},
                     "share_support_at_least": {str(t): float((sup >= t).mean()) if sup.size else None
                                                for t in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)}}
    return out


def mode_figures(it, mode: str, feats, scenes, results, seconds: float) -> dict:
    scores = [metrics.score_phrases([p.text for p in r.phrases], s) for r, s in zip(results, scenes)]
    fig = {
        "specificity": metrics.bootstrap([r.specificity for r in results]),
        "rejected_per_prompt": metrics.bootstrap([len(r.rejected) for r in results]),
        "recall": metrics.bootstrap([x.recall for x in scores]),
        "precision": metrics.bootstrap([x.precision for x in scores]),
        "distractors_per_prompt": metrics.bootstrap([x.distractors for x in scores]),
        "false_per_prompt": metrics.bootstrap([x.false for x in scores]),
        "phrases_per_prompt": metrics.bootstrap([x.added for x in scores]),
        "tokens": metrics.bootstrap([r.token_count for r in results]),
        "seconds_per_image": seconds,
    }
    by_category: dict[str, int] = {}
    for r, sc in zip(results, scenes):
        for p in r.phrases:
            if metrics.classify(p.text, sc) == "distractor":
                by_category[p.category] = by_category.get(p.category, 0) + 1
    fig["distractors_by_category"] = {c: n / len(results) for c, n in sorted(by_category.items())}
    recall_by = {}
    for f in metrics.RECALL_FACTORS:
        vals = [float(x.found[f]) for x in scores if f in x.found]
        if vals:
            recall_by[f] = metrics.bootstrap(vals)
    fig["recall_by_factor"] = recall_by
    sims = [r.similarity for r in results]
    if mode == "negative":
        sims = [float(it.similarity(f, [r.prompt])[0]) for f, r in zip(feats, results)]
        generic = [float(it.similarity(f, [GENERIC_NEGATIVE])[0]) for f in feats]
        fig["similarity"] = metrics.bootstrap(sims)
        fig["generic_negative_similarity"] = metrics.bootstrap(generic)
        fig["negative_minus_generic"] = metrics.bootstrap(list(np.subtract(sims, generic)))
    elif all(s is not None for s in sims):
        fig["similarity"] = metrics.bootstrap(sims)
    if mode == "style":
        fig["subject_leaks_per_prompt"] = metrics.bootstrap([x.subject_leaks for x in scores])
        fig["prompts_with_leak"] = metrics.bootstrap([float(x.subject_leaks > 0) for x in scores])
    fig["_sims"] = [float(s) for s in sims]
    fig["_recall"] = [x.recall for x in scores]
    fig["_precision"] = [x.precision for x in scores]
    fig["_distractors"] = [x.distractors for x in scores]
    return fig


def floor_effect(on: dict, off: dict) -> dict:
    """A floor's effect on one mode, paired image by image against the same mode with the floor
    off: the mean change of recall, precision and distractors, with 95% bootstrap intervals."""
    def change(key: str):
        pairs = [(a, b) for a, b in zip(on[key], off[key]) if a is not None and b is not None]
        return metrics.bootstrap([a - b for a, b in pairs])
    return {"recall_change": change("_recall"), "precision_change": change("_precision"),
            "distractors_change": change("_distractors")}


def weak_match_figures(it, world_feats, abstract_feats) -> dict:
    world = [it.analyze_features(f, top_n=1) for f in world_feats]
    abstract = [it.analyze_features(f, top_n=1) for f in abstract_feats]
    ws = [a.match_strength for a in world]
    as_ = [a.match_strength for a in abstract]
    return {
        "auc": metrics.auc_interval(ws, as_),
        "world_strength": metrics.bootstrap(ws), "abstract_strength": metrics.bootstrap(as_),
        "world_flagged": metrics.bootstrap([float(a.weak_match) for a in world]),
        "abstract_flagged": metrics.bootstrap([float(a.weak_match) for a in abstract]),
        "flavors": len(it.vocab["flavors"].labels),
        "_world": ws, "_abstract": as_,
    }


def artist_figures(it, feats, scenes, bins: int = 5) -> dict:
    rows = []
    for f, s in zip(feats, scenes):
        top = it.analyze_features(f, top_n=1).categories["artists"][0]
        name = top.text.removeprefix("inspired by ").removeprefix("by ")
        rows.append((float(top.margin or 0.0), float(name == s.artist), s.artist is not None))
    margins = np.array([r[0] for r in rows])
    correct = np.array([r[1] for r in rows])
    has = np.array([r[2] for r in rows])
    edges = np.quantile(margins, np.linspace(0, 1, bins + 1))
    curve = []
    for k in range(bins):
        sel = (margins >= edges[k]) & ((margins < edges[k + 1]) if k < bins - 1 else (margins <= edges[k + 1]))
        curve.append({"margin_low": float(edges[k]), "margin_high": float(edges[k + 1]), "n": int(sel.sum()),
                      "correct": metrics.bootstrap(list(correct[sel]))})
    return {
        "top1_on_artist_images": metrics.bootstrap(list(correct[has])),
        "top1_on_all_images": metrics.bootstrap(list(correct)),
        "chance_on_artist_images": 1 / len(it.vocab["artists"].labels) * 2,  # two phrases per name
        "reliability": curve,
    }


CEILING_GAPS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.15)


def ceiling_figures(it, feats, scenes, gaps: tuple[float, ...] = CEILING_GAPS) -> list[dict]:
    """What the model allows at best: an oracle that knows which phrases name which style
    factor (no real vocabulary says) takes, per factor, the best-scoring phrase of the
    best-scoring value, and only when that value leads the runner-up value by ``gap``. Its
    precision at a given recall bounds what any phrase-by-phrase rule on these scores can
    reach, since each factor's phrases then compete with nothing but their own kind."""
    from bench.toyworld.vocab import FACTOR_PHRASES
    from image2prompt import SearchSettings
    from image2prompt.modes.base import SearchContext

    ctx = SearchContext(it, SearchSettings(floor=None))
    cats = it.vocab.merged_categories()
    by_factor: dict[str, list[tuple[str, int, str]]] = {}
    for c in cats:
        for i, label in enumerate(it.vocab[c].labels):
            hit = FACTOR_PHRASES.get(label)
            if hit and hit[0] in metrics.RECALL_FACTORS:
                by_factor.setdefault(hit[0], []).append((c, i, hit[1]))
    picks: list[list[tuple[float, str]]] = []  # per image: (lead over the runner-up value, phrase)
    for f in feats:
        tables = {c: ctx.table_scores(c, f) for c in cats}
        image = []
        for rows in by_factor.values():
            best: dict[str, tuple[float, str]] = {}
            for c, i, value in rows:
                score = float(tables[c][i])
                if value not in best or score > best[value][0]:
                    best[value] = (score, it.vocab[c].labels[i])
            ranked = sorted(best.values(), reverse=True)
            image.append((ranked[0][0] - ranked[1][0], ranked[0][1]))
        picks.append(image)
    out = []
    for gap in gaps:
        scores = [metrics.score_phrases([t for lead, t in image if lead >= gap], s) for image, s in zip(picks, scenes)]
        out.append({"gap": gap, "precision": metrics.bootstrap([x.precision for x in scores]),
                    "recall": metrics.bootstrap([x.recall for x in scores]),
                    "phrases_per_prompt": float(np.mean([x.added for x in scores]))})
    return out


def turbo_figures(figs: dict, suffix: str = "") -> dict | None:
    if "best" + suffix not in figs or "turbo" + suffix not in figs:
        return None
    b, t = figs["best" + suffix], figs["turbo" + suffix]
    return {"similarity_ratio": metrics.paired_ratio(t["_sims"], b["_sims"]),
            "speed_ratio": b["seconds_per_image"] / t["seconds_per_image"]}


def floor_label(floor: float | None) -> str:
    return " (floor off)" if floor is None else f" (floor {floor:g})"


def evaluate(model: Path, *, images: int, abstract: int, modes: tuple[str, ...], repeats: int = 1,
             cache_dir: str | None = None, floors: tuple[float | None, ...] | None = None,
             settings: dict | None = None) -> dict:
    from image2prompt import SearchSettings

    offline_env()
    it = load(model, cache_dir)
    scenes = sample_scenes(images, EVAL_SEED)
    abstract_scenes = sample_scenes(abstract, ABSTRACT_SEED, abstract_share=1.0)
    t0 = time.perf_counter()
    feats = encode(it, scenes)
    abstract_feats = encode(it, abstract_scenes) if abstract else []
    encode_s = (time.perf_counter() - t0) / max(1, images + abstract)
    report: dict = {"model": str(model), "images": images, "abstract_images": abstract,
                    "encode_seconds_per_image": encode_s, "modes": {}}
    clip = it.clips[0]
    report["zero_shot"] = metrics.zero_shot([f[0] for f in feats], scenes, lambda t: clip.encode_texts(t))
    floors = floors if floors else (SearchSettings().floor,)
    labels = [floor_label(f) if len(floors) > 1 else "" for f in floors]
    report["floors"] = list(floors)
    report["evidence"] = {}
    for floor, label in zip(floors, labels):
        for m in modes:
            results, sec = timed_search(it, feats, SearchSettings(mode=m, floor=floor, **(settings or {})), repeats)
            report["modes"][m + label] = mode_figures(it, m, feats, scenes, results, sec)
            if floor is None and m in ("best", "fast"):
                report["evidence"][m] = phrase_evidence(results, scenes, feats, it)
    report["turbo_vs_best"] = {label or "default": turbo_figures(report["modes"], label) for label in labels}
    if None in floors and len(floors) > 1:
        off = floor_label(None)
        report["floor_effect"] = {m + label: floor_effect(report["modes"][m + label], report["modes"][m + off])
                                  for m in modes for f, label in zip(floors, labels) if f is not None}
    if abstract:
        report["weak_match"] = weak_match_figures(it, feats, abstract_feats)
    report["artists"] = artist_figures(it, feats, scenes)
    report["ceiling"] = ceiling_figures(it, feats, scenes)
    return report


# -- output ---------------------------------------------------------------------------
def _ci(v) -> str:
    if isinstance(v, (list, tuple)) and len(v) == 3:
        return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown(report: dict) -> str:
    lines = [f"Model `{report['model']}`, {report['images']} held-out images, "
             f"{report['abstract_images']} abstract images.", "",
             "| mode | recall | precision | distractors / prompt | phrases | similarity | specificity | s / image | tokens |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, f in report["modes"].items():
        lines.append(f"| {m} | {_ci(f['recall'])} | {_ci(f['precision'])} | {_ci(f['distractors_per_prompt'])} | "
                     f"{f['phrases_per_prompt'][0]:.1f} | {_ci(f['similarity']) if 'similarity' in f else '-'} | "
                     f"{f['specificity'][0]:.2f} | {f['seconds_per_image']:.4f} | {f['tokens'][0]:.1f} |")
    lines += ["", "Distractors per prompt, by category:", ""]
    for m, f in report["modes"].items():
        lines.append(f"- {m}: " + ", ".join(f"{c} {v:.2f}" for c, v in f["distractors_by_category"].items()))
    lines += ["", "Recall by factor:", "", "| mode | " + " | ".join(metrics.RECALL_FACTORS) + " |",
              "|---|" + "---|" * len(metrics.RECALL_FACTORS)]
    for m, f in report["modes"].items():
        rb = f["recall_by_factor"]
        lines.append(f"| {m} | " + " | ".join(_ci(rb[k]) if k in rb else "-" for k in metrics.RECALL_FACTORS) + " |")
    for m, s in report["modes"].items():
        if m.startswith("style"):
            lines += ["", f"{m}: subject leaks per prompt {_ci(s['subject_leaks_per_prompt'])}, "
                          f"prompts with a leak {_ci(s['prompts_with_leak'])}."]
        if m.startswith("negative"):
            lines += ["", f"{m}: similarity to the image {_ci(s['similarity'])}, generic negative prompt "
                          f"{_ci(s['generic_negative_similarity'])}, difference {_ci(s['negative_minus_generic'])}."]
    for label, t in (report.get("turbo_vs_best") or {}).items():
        if t:
            lines += ["", f"Turbo against best ({label.strip(' ()')}): similarity ratio {_ci(t['similarity_ratio'])}, "
                          f"speed ratio {t['speed_ratio']:.2f}x."]
    if report.get("floor_effect"):
        lines += ["", "Each floor against the floor off, paired image by image (change of the mean):", "",
                  "| mode | recall | precision | distractors / prompt |", "|---|---|---|---|"]
        for m, e in report["floor_effect"].items():
            lines.append(f"| {m} | {_ci(e['recall_change'])} | {_ci(e['precision_change'])} | "
                         f"{_ci(e['distractors_change'])} |")
    for m, ev in report.get("evidence", {}).items():
        lines += ["", f"Added phrases of {m} mode with the floor off, by what they are for their image:", "",
                  "| kind | phrases | median margin | median z | median support | support >= 0.5 | 0.75 | 1.0 "
                  "| 1.25 | 1.5 | 2.0 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for kind, e in ev.items():
            if not e["n"]:
                continue
            shares = " | ".join(f"{v:.2f}" for v in e["share_support_at_least"].values())
            lines.append(f"| {kind} | {e['n']} | {e['median_margin']:+.3f} | {e['median_z']:.2f} | "
                         f"{e['median_support']:.2f} | {shares} |")
    if report.get("ceiling"):
        lines += ["", "The ceiling: an oracle that knows which phrases name which factor takes the best value's best "
                      "phrase of each factor when it leads the runner-up value by the gap:", "",
                  "| lead over the runner-up | recall | precision | phrases / prompt |", "|---|---|---|---|"]
        for c in report["ceiling"]:
            lines.append(f"| {c['gap']:.2f} | {_ci(c['recall'])} | {_ci(c['precision'])} | {c['phrases_per_prompt']:.1f} |")
    if "weak_match" in report:
        w = report["weak_match"]
        lines += ["", f"Weak match ({w['flavors']} flavors): AUC {_ci(w['auc'])}; match strength world "
                      f"{_ci(w['world_strength'])}, abstract {_ci(w['abstract_strength'])}; flagged world "
                      f"{_ci(w['world_flagged'])}, abstract {_ci(w['abstract_flagged'])}."]
    a = report["artists"]
    lines += ["", f"Artists: top hypothesis right on {_ci(a['top1_on_artist_images'])} of artist images "
                  f"(chance {a['chance_on_artist_images']:.3f}), {_ci(a['top1_on_all_images'])} of all images.",
              "", "| artist margin | images | top hypothesis right |", "|---|---|---|"]
    for b in a["reliability"]:
        lines.append(f"| {b['margin_low']:+.3f} to {b['margin_high']:+.3f} | {b['n']} | {_ci(b['correct'])} |")
    lines += ["", "Zero-shot accuracy per factor:", "", "| factor | kind | accuracy | chance | images |",
              "|---|---|---|---|---|"]
    for k, z in report["zero_shot"].items():
        lines.append(f"| {k} | {z['kind']} | {z['accuracy']:.3f} [{z['low']:.3f}, {z['high']:.3f}] | "
                     f"{z['chance']:.3f} | {z['n']} |")
    return "\n".join(lines)


def _public(obj):
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_public(v) for v in obj]
    return obj


def parse_floors(ap: argparse.ArgumentParser, text: str) -> tuple[float | None, ...]:
    """``--floors off,0.75,...`` as floors (None: off); a bad one is the parser's one-line error."""
    from image2prompt.settings import parse_floor

    try:
        return tuple(parse_floor(f) for f in text.split(","))
    except ValueError:
        ap.error(f"--floors {text!r}: give numbers or off, separated by commas")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=MODEL_DIR, help="a local-dir: open_clip folder")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--abstract", type=int, default=100, help="out-of-world images for the weak-match figures")
    ap.add_argument("--modes", default=",".join(ALL_MODES))
    ap.add_argument("--repeats", type=int, default=1, help="time each mode this many times, keep the fastest")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--floors", default=None,
                    help="comma-separated relevance floors to run every mode with (off or a number), e.g. off,1.0; "
                         "default: the library's default floor")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a search setting for every mode (repeatable), e.g. --set shortlist=24")
    args = ap.parse_args(argv)
    floors = parse_floors(ap, args.floors) if args.floors else None
    settings = {}
    for item in args.set:
        name, _, value = item.partition("=")
        try:
            settings[name.strip()] = json.loads(value) if value.strip() not in ("", "None") else None
        except ValueError:
            ap.error(f"--set {item!r}: give NAME=VALUE with a JSON value, e.g. shortlist=24")
    try:
        from image2prompt import SearchSettings

        SearchSettings(**settings)
    except (TypeError, ValueError) as err:
        ap.error(f"--set: {err}")
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = sorted(set(modes) - set(ALL_MODES))
    if unknown:
        ap.error(f"unknown mode(s): {', '.join(unknown)}")
    if not (args.model / "open_clip_config.json").is_file():
        ap.error(f"{args.model}: no trained model here; build one with python -m bench.toyworld.train")
    report = evaluate(args.model, images=args.images, abstract=args.abstract, modes=modes, repeats=args.repeats,
                      floors=floors, settings=settings)
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(_public(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
