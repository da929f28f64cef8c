"""Build the style-study report: one self-contained HTML page and a JSON summary."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..batch.engine import feature_path
from ..batch.records import read_records
from ..errors import Image2PromptError, ImageLoadError
from ..features import Features, FeaturesError
from ..io import load_image
from .collect import Collection, ImageRef, Selection, grouper
from .stats import METHOD, Cooccurrence, Separation, cooccurrence, separating_phrases

__all__ = ["ReportError", "ReportOptions", "build_report"]

log = logging.getLogger(__name__)

THUMB = 96  # pixels, the long side


class ReportError(Image2PromptError):
    """The records cannot make a report (none readable, none with a result)."""


@dataclass
class ReportOptions:
    group_by: str | None = None  # folder, column:NAME, regex:PATTERN
    features: str | None = None  # the --store-features folder of the batch run (for the map)
    map_method: str = "pca"  # pca, or umap (when umap-learn is installed)
    top: int = 12  # phrases shown per category
    points: int = 2000  # at most this many images on the map
    thumbnails: int = 48  # at most this many thumbnails in each gallery (and 40 on the map)
    roots: Sequence[str] = ()  # folders relative sources are looked up in (besides the records' folder)
    fingerprints: Sequence[str] = ()  # count only the records of these settings fingerprints (prefixes)
    min_images: int = 5
    title: str | None = None


def build_report(results: Sequence[str | Path], options: ReportOptions | None = None, *,
                 html_path: str | Path | None = None, json_path: str | Path | None = None) -> dict[str, Any]:
    """Read the records of ``results`` (JSONL, CSV or Parquet from ``batch``), write the page and/or
    the summary, and return the summary."""
    opts = options or ReportOptions()
    if opts.map_method not in ("pca", "umap"):
        raise ReportError(f"--map {opts.map_method!r}: use pca or umap")
    started = time.perf_counter()
    for path in results:
        if not Path(path).exists():
            raise ReportError(f"{path}: no such file")
    records = lambda: chain.from_iterable(map(read_records, results))
    selection = Selection(grouper(opts.group_by), opts.fingerprints)
    # counting every record, in the hope that no image has two
    col = Collection(opts.group_by, points=opts.points, thumbnails=opts.thumbnails)
    col.add_all(r for r in records() if selection.offer(r))
    if selection.finish().repeats:  # some have: count again, one record per image
        del col
        wanted = (r for r in records() if selection.wants(r))
        col = Collection(opts.group_by, points=opts.points, thumbnails=opts.thumbnails)
        col.add_all(r for r, keep in zip(wanted, selection.keep) if keep)
    col.records = selection.records
    col.finish()
    if opts.group_by and opts.group_by.strip() == "folder":
        col.shorten_folders()
    if col.images == 0:
        found = "" if not selection.other_fingerprints else " of fingerprint " + " ".join(selection.wanted) + \
            " (the records have " + ", ".join(f"{fp or '(none)'}: {k}" for fp, k in selection.seen.items()) + ")"
        raise ReportError(f"{', '.join(map(str, results))}: no records with a result{found} "
                          f"({col.records} records read, {col.errors} errors)")
    left_out = selection.left_out()
    if left_out:
        log.warning("%d records read, %d images counted. %s", col.records, col.images, left_out)
    log.info("read %d records (%d images) in %.1f s", col.records, col.images, time.perf_counter() - started)
    roots = [Path(r) for r in opts.roots] + [Path(p).resolve().parent for p in results] + [Path.cwd()]
    separation = separating_phrases(col, min_images=opts.min_images)
    cooc = cooccurrence(col)
    summary = _summary(col, opts, separation, cooc)
    summary["left_out"] = {"repeats": selection.repeats, "other_fingerprints": selection.other_fingerprints,
                           "fingerprint_filter": list(selection.wanted), "records_by_fingerprint": selection.seen,
                           "note": left_out}
    for warning in summary["warnings"]:
        log.warning("%s", warning)
    if json_path is not None:
        _write(json_path, json.dumps(summary, ensure_ascii=False, indent=1, allow_nan=False, default=_jsonable))
    if html_path is not None:
        _write(html_path, _page(col, opts, summary, separation, cooc, roots))
    log.info("report built in %.1f s", time.perf_counter() - started)
    return summary


def _write(path: str | Path, text: str) -> None:
    """Write an output, making its folder as batch does; a failure is one line, not a traceback."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise ReportError(f"{path}: cannot write it ({err.strerror or err})") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(type(value).__name__)


# --- the summary ------------------------------------------------------------------------------


def _top_phrases(col: Collection, category: str, n: int, group: str | None = None) -> list[Any]:
    stats = [s for (c, _), s in col.phrases.items() if c == category and s.images("top")]
    if group is None:
        key = lambda s: (-s.images("top"), -(s.mean if s.n_scores else -9))
    else:  # a group's own counts, ties broken by its own scores (not the collection's)
        stats = [s for s in stats if s.top.get(group, 0)]

        def key(s: Any) -> tuple[float, float]:
            mean = s.group_mean(group)
            return -s.top.get(group, 0), -(mean if math.isfinite(mean) else -9)
    return sorted(stats, key=key)[:n]


def _coverage_warnings(col: Collection) -> dict[str, str]:
    """Per category where K (--store-scores) is at least its size: every image's top K holds
    every phrase, so the shares are all near 100% and their ranking means nothing."""
    out = {}
    for category, k in col.top_k.items():
        size = sum(1 for (c, _), s in col.phrases.items() if c == category and s.images("top"))
        if size and k >= size:
            out[category] = (f"{category}: the top {k} phrases stored per image (batch --store-scores {k}) hold "
                             f"all {size} phrases of this category seen, so every phrase is in nearly every "
                             "image's top phrases: the shares (all near 100%) and their ranking mean nothing; "
                             "compare the scores, or run batch with a --store-scores below the category's size")
    return out


def _summary(col: Collection, opts: ReportOptions, separation: list[Separation], cooc: Cooccurrence) -> dict[str, Any]:
    n, scored = col.images, max(1, col.scored)
    cats = {}
    for category in col.categories():
        cats[category] = [{
            "text": s.text, "images": s.images("top"), "share": s.images("top") / scored,
            "in_prompts": s.images("prompt") / n, "mean_score": s.mean if math.isfinite(s.mean) else None,
            "quartiles": [float(v) for v in np.percentile(s.sample, [25, 50, 75])] if s.sample else None,
            "hypothesis": s.hypothesis} for s in _top_phrases(col, category, opts.top)]
    groups = {g: {"images": k, "weak_matches": col.weak_by_group.get(g, 0),
                  "top": {c: [s.text for s in _top_phrases(col, c, 5, g)] for c in col.categories()}}
              for g, k in sorted(col.groups.items(), key=lambda kv: -kv[1])}
    return {
        "version": __version__, "records": col.records, "images": n, "errors": col.errors,
        "warnings": list(_coverage_warnings(col).values()),
        "with_top_scores": col.with_scores, "group_by": opts.group_by, "groups": groups,
        "clip_models": col.models, "modes": col.modes, "fingerprints": col.fingerprints,
        "weak_matches": col.weak, "categories": cats,
        "separating": {"method": METHOD.format(min_images=opts.min_images),
                       "tested": len(separation), "significant": [s.to_dict() for s in separation if s.significant]},
        "cooccurring": cooc.pairs(20),  # those seen together more often than chance
    }


# --- the page -----------------------------------------------------------------------------------


def _thumb(ref: ImageRef, roots: Sequence[Path]) -> Any:
    """A small RGB thumbnail of the image, or None when it cannot be found or read."""
    src = Path(ref.source)
    candidates = [src] if src.is_absolute() else [r / src for r in roots]
    for path in candidates:
        if path.is_file():
            try:
                im = load_image(path)
            except ImageLoadError:
                return None
            im.thumbnail((THUMB, THUMB))
            return im
    return None


def _jpeg_uri(im: Any) -> str:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=72)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _map(col: Collection, opts: ReportOptions, roots: Sequence[Path]) -> tuple[str | None, str]:
    """The feature map as a data URI (or None) and a sentence saying what it shows or why it is missing."""
    from . import plots

    if not opts.features:
        return None, ("No map: give --features DIR, the folder the batch run stored features in "
                      "(batch --store-features DIR).")
    refs, vectors = [], []
    for ref in col.points:
        if not ref.content_hash:
            continue
        try:  # a missing file is a FeaturesError too
            f = Features.load(feature_path(opts.features, ref.content_hash))
        except (FeaturesError, OSError, ValueError):
            continue
        refs.append(ref)
        vectors.append(np.concatenate([np.asarray(v, np.float32).ravel() for v in f.vectors]))
    if len(refs) < 3:
        return None, f"No map: fewer than 3 of the sampled images have stored features in {opts.features}."
    x = np.stack(vectors)
    method, xy = "PCA", None
    if opts.map_method == "umap":
        try:
            import umap

            method, xy = "UMAP", umap.UMAP(n_components=2, random_state=0).fit_transform(x)
        except ImportError:
            log.warning("umap-learn is not installed: the map uses PCA")
    xy = _pca(x) if xy is None else xy
    grouped = len(col.groups) > 1
    colour = [r.group if grouped else (r.label or "?") for r in refs]
    thumbs = []
    step = max(1, len(refs) // 40)
    for i in range(0, len(refs), step)[:40]:
        im = _thumb(refs[i], roots)
        if im is not None:
            im.thumbnail((48, 48))
            thumbs.append((i, im))
    what = "group" if grouped else "best medium"
    return plots.data_uri(plots.feature_map_figure(xy, colour, method, thumbs)), (
        f"{method} of the image features of {len(refs)} images (a uniform sample), coloured by {what}; "
        f"{len(thumbs)} thumbnails placed at their points. Near points: images CLIP encodes alike.")


def _pca(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    return u[:, :2] * s[:2]


def _page(col: Collection, opts: ReportOptions, summary: dict[str, Any], separation: list[Separation],
          cooc: Cooccurrence, roots: Sequence[Path]) -> str:
    from . import plots

    e = html.escape
    n = col.images
    parts: list[str] = []
    title = opts.title or "How CLIP sees this collection"
    models = ", ".join(col.models)
    parts.append(f"<header><h1>{e(title)}</h1><p class=meta>{n} images"
                 f"{f', {col.errors} records with errors left out' if col.errors else ''} · "
                 f"CLIP: {e(models)} · modes: {e(', '.join(col.modes))} · "
                 f"{len(col.groups)} group{'s' if len(col.groups) != 1 else ''}"
                 f"{f' by {e(opts.group_by)}' if opts.group_by else ''} · image2prompt {__version__}</p>"
                 + (f"<p class=note>{col.records} records read, {n} images counted. {e(summary['left_out']['note'])}"
                    "</p>" if summary.get("left_out", {}).get("note") else "") + "</header>")
    parts.append(_HOW_TO_READ.format(
        scores=("every image's top phrases per category (batch --store-scores)" if col.with_scores == n else
                f"the top phrases of {col.with_scores} images and the prompt phrases of the rest"
                if col.with_scores else "the phrases of each image's prompt only (run batch with "
                                        "--store-scores K to see every image's top K per category)")))
    parts.append("<section><h2>The phrases that score highest</h2><p>For each category: the phrases most often "
                 "among an image's top phrases (the share of images in brackets), and the spread of their "
                 "scores.</p><div class=grid>")
    covered = _coverage_warnings(col)
    for category in col.categories():
        top = _top_phrases(col, category, opts.top)
        if not top:
            continue
        uri = plots.score_boxes(category, [s.text for s in top], [s.sample or [float("nan")] for s in top],
                                [s.images("top") / max(1, col.scored) for s in top])
        note = " <span class=hyp>names are hypotheses about resemblance</span>" if any(s.hypothesis for s in top) else ""
        warn = f"<p class=warn>{e(covered[category])}.</p>" if category in covered else ""
        parts.append(f"<figure><img alt='scores of {e(category)}' src='{uri}'><figcaption>{e(category)}{note}"
                     f"</figcaption>{warn}</figure>")
    parts.append("</div></section>")
    in_prompts = sorted(col.phrases.values(), key=lambda s: -s.images("prompt"))[:20]
    in_prompts = [s for s in in_prompts if s.images("prompt")]
    if in_prompts:
        uri = plots.share_bars("How often each phrase makes it into the prompts", [s.text for s in in_prompts],
                               [s.images("prompt") / n for s in in_prompts])
        parts.append(f"<section><h2>Phrases in the prompts</h2><img alt='phrases in prompts' src='{uri}'></section>")
    parts.append(_groups_section(col, opts, separation))
    if len(cooc.labels) >= 2:
        uri = plots.lift_heatmap(cooc.labels, cooc.counts, cooc.images)
        pairs = cooc.pairs(15)
        rows = "".join(f"<tr><td>{e(p['a'])}</td><td>{e(p['b'])}</td><td>{p['images']}</td>"
                       f"<td>{p['lift']:.2f}</td></tr>" for p in pairs)
        table = (f"<table><tr><th>phrase</th><th>with</th><th>images</th><th>lift</th></tr>{rows}</table>" if pairs
                 else "<p>No pair is seen together more often than chance.</p>")
        parts.append("<section><h2>Phrases that appear together</h2><p>Pairs of prompt phrases among the "
                     f"{len(cooc.labels)} most frequent. Lift is how many times more often a pair is seen than "
                     "if the two were independent; the table lists the pairs seen together more often than "
                     "chance (lift above 1), the most frequent first.</p><div class=grid><figure>"
                     f"<img alt='co-occurrence' src='{uri}'></figure>{table}</div></section>")
    gallery = []
    for ref in col.weak_sample:
        im = _thumb(ref, roots)
        label = e(Path(ref.source).name)
        shown = "<div class=missing>not found</div>" if im is None else f"<img alt='{label}' src='{_jpeg_uri(im)}'>"
        gallery.append(f"<figure class=thumb>{shown}<figcaption>{label}</figcaption></figure>")
    share = 100 * col.weak / n
    parts.append(f"<section><h2>Weak matches</h2><p><b>{col.weak}</b> of {n} images ({share:.1f}%) are weak matches: "
                 "no flavor stands out from its table for them, so their phrases are closer to guesses. "
                 + (f"A sample of {len(gallery)}:" if gallery else "") + "</p>"
                 f"<div class=gallery>{''.join(gallery)}</div></section>")
    map_uri, caption = _map(col, opts, roots)
    parts.append("<section><h2>Map of the image features</h2>"
                 + (f"<figure><img alt='feature map' src='{map_uri}'><figcaption>{e(caption)}</figcaption></figure>"
                    if map_uri else f"<p>{e(caption)}</p>") + "</section>")
    body = "\n".join(parts)
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
            f"content='width=device-width, initial-scale=1'><title>{e(title)}</title><style>{_CSS}</style>"
            f"</head><body><main>{body}<footer>Made by image2prompt {__version__} report from "
            f"{col.records} records; the same numbers are in the JSON summary (--json).</footer></main>"
            f"</body></html>\n")


def _groups_section(col: Collection, opts: ReportOptions, separation: list[Separation]) -> str:
    from . import plots

    e = html.escape
    if len(col.groups) < 2:
        hint = "" if opts.group_by else " Give --group-by folder, column:NAME or regex:PATTERN to compare groups."
        return f"<section><h2>Groups</h2><p>One group: nothing to compare.{hint}</p></section>"
    rows = "".join(f"<tr><td>{e(g)}</td><td>{k}</td><td>{col.weak_by_group.get(g, 0)}</td><td>"
                   + e(", ".join(s.text for s in _top_phrases(col, 'mediums' if 'mediums' in col.categories()
                                                              else col.categories()[0], 3, g)))
                   + "</td></tr>" for g, k in sorted(col.groups.items(), key=lambda kv: -kv[1])[:30])
    out = ["<section><h2>What separates the groups</h2>",
           f"<table><tr><th>group</th><th>images</th><th>weak matches</th><th>best mediums</th></tr>{rows}</table>",
           f"<p class=method><b>Method.</b> {e(METHOD.format(min_images=opts.min_images))}</p>"]
    flagged = [s for s in separation if s.significant]
    out.append(f"<p>{len(separation)} phrase-group pairs tested; <b>{len(flagged)}</b> separate their group "
               "from the rest at a false discovery rate of 5%.</p>")
    by_group: dict[str, list[Separation]] = {}
    for s in flagged:
        by_group.setdefault(s.group, []).append(s)
    for group, rows_ in list(by_group.items())[:12]:
        rows_ = sorted(rows_, key=lambda s: -abs(s.effect))[:15]
        other = "the other group" if len(col.groups) == 2 else "the rest"
        uri = plots.effects(f"{group} vs {other}", [f"{s.text} ({s.category})" for s in rows_],
                            [s.effect for s in rows_], [s.low for s in rows_], [s.high for s in rows_],
                            [True] * len(rows_))
        table = "".join(f"<tr><td>{e(s.text)}{' <span class=hyp>hypothesis</span>' if s.hypothesis else ''}</td>"
                        f"<td>{e(s.category)}</td><td>{100 * s.share:.1f}%</td><td>{100 * s.share_rest:.1f}%</td>"
                        f"<td>{100 * s.effect:+.1f} [{100 * s.low:+.1f}, {100 * s.high:+.1f}]</td>"
                        f"<td>{s.q:.2g}</td></tr>" for s in rows_)
        out.append(f"<h3>{e(group)}</h3><div class=grid><figure><img alt='effects for {e(group)}' src='{uri}'>"
                   f"</figure><table><tr><th>phrase</th><th>category</th><th>in group</th><th>in {other}</th>"
                   f"<th>difference, points [95% CI]</th><th>q</th></tr>{table}</table></div>")
    out.append("</section>")
    return "".join(out)


_HOW_TO_READ = """<section class=howto><h2>How to read this</h2><ul>
<li><b>Scores are CLIP similarities</b> between an image and a phrase (cosine similarity of their embeddings).
They are comparable within a category and a model, not across models; they are not probabilities.
This report is built from {scores}.</li>
<li><b>Artist names are hypotheses about resemblance.</b> A high score says the image looks like the images
that were captioned with that name when CLIP was trained. Nobody is identified, and it does not say who made
the image.</li>
<li><b>A missing phrase may be missing from the vocabulary</b>, not from the images: the report only sees the
phrases the vocabulary holds.</li>
<li><b>Weak matches</b> are images for which no phrase stands out; treat their phrases with more suspicion.</li>
<li>Group differences are differences in how often a phrase is among an image's top phrases, with intervals and
a correction for the many phrases compared (see the method under "What separates the groups").</li>
</ul></section>"""

_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d0d7de;--bg:#fff;--card:#f6f8fa;--accent:#3b5bdb}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#9198a1;--line:#3d444d;--bg:#0d1117;--card:#151b23}
 img{background:#fff}}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{margin:0 0 4px;font-size:26px}h2{margin:32px 0 8px;font-size:20px;border-bottom:1px solid var(--line)}
h3{margin:20px 0 6px}.meta,figcaption,.method,footer{color:var(--muted);font-size:13px}
.howto{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:4px 16px;margin-top:16px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:16px;align-items:start}
figure{margin:0}img{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:13px;width:100%}th,td{text-align:left;padding:4px 8px;
border-bottom:1px solid var(--line)}th{color:var(--muted);font-weight:600}
.note,.warn{font-size:13px;background:#fff3bf;color:#5c3c00;border-radius:6px;padding:4px 10px}
.hyp{font-size:11px;background:#fff3bf;color:#5c3c00;border-radius:8px;padding:1px 6px}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.thumb{width:104px;font-size:11px;text-align:center}
.thumb img,.missing{width:96px;height:96px;object-fit:cover;border-radius:4px;border:1px solid var(--line)}
.missing{display:flex;align-items:center;justify-content:center;color:var(--muted)}
.thumb figcaption{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
footer{margin-top:40px}
"""

