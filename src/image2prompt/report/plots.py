"""The report's figures, drawn with matplotlib (Agg, no display) and embedded as PNG data URIs."""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["data_uri", "effects", "feature_map_figure", "group_colours", "lift_heatmap", "score_boxes", "share_bars"]

DPI = 96
OTHER = "#7f7f7f"  # tab10's grey: the groups past the palette, together


def group_colours(names: Sequence[str]) -> dict[str, str]:
    """A colour per group from matplotlib's qualitative tab10 (ten hues, none a near-duplicate of
    another): up to ten groups get one each; with more, the nine largest (the first named) keep
    the nine hues that are not grey and the rest share the grey as "other"."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    tab10 = [to_hex(c) for c in colormaps["tab10"](range(10))]  # a listed map: index i is its i-th colour
    names = list(dict.fromkeys(names))
    hues = tab10 if len(names) <= len(tab10) else [c for c in tab10 if c != OTHER]
    return {name: (hues[k] if k < len(hues) else OTHER) for k, name in enumerate(names)}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "figure.dpi": DPI, "text.parse_math": False})  # a phrase with "$" is text, not TeX
    return plt


def data_uri(fig: Any) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _short(text: str, n: int = 42) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _finish(fig: Any, ax: Any, title: str, ticks: Any, labels: list[str], xlabel: str) -> str:
    """The phrases down the y axis, the axis' label and the title; then the figure as a data URI."""
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels)
    ax.set_xlabel(xlabel)
    ax.set_title(title, loc="left", fontweight="bold")
    return data_uri(fig)


def score_boxes(title: str, labels: Sequence[str], samples: Sequence[Sequence[float]],
                shares: Sequence[float]) -> str:
    """Horizontal box plots of each phrase's scores (with the points), best at the top."""
    plt = _plt()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(6.4, 0.32 * n + 0.9))
    data = [np.asarray(s, float) for s in samples]
    import matplotlib

    sideways = ({"orientation": "horizontal"} if tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10)
                else {"vert": False})
    ax.boxplot(data[::-1], **sideways, widths=0.55, showfliers=False,
               medianprops={"color": "#e8590c"}, boxprops={"color": "#3b5bdb"})
    rng = np.random.default_rng(0)
    for i, s in enumerate(data[::-1], start=1):
        ax.scatter(s, i + rng.uniform(-0.15, 0.15, len(s)), s=4, alpha=0.35, color="#3b5bdb", linewidths=0)
    ticks = [f"{_short(t)}  ({100 * sh:.0f}%)" for t, sh in zip(labels[::-1], shares[::-1])]
    return _finish(fig, ax, title, range(1, n + 1), ticks, "CLIP similarity to the image (where among the image's top phrases)")


def share_bars(title: str, labels: Sequence[str], shares: Sequence[float], colors: Sequence[str] | None = None) -> str:
    plt = _plt()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(6.4, 0.28 * n + 0.8))
    ax.barh(range(n), [100 * s for s in shares][::-1], color=(list(colors)[::-1] if colors else "#3b5bdb"))
    return _finish(fig, ax, title, range(n), [_short(t) for t in labels][::-1], "% of images whose prompt has the phrase")


def effects(title: str, labels: Sequence[str], effect: Sequence[float], low: Sequence[float],
            high: Sequence[float], significant: Sequence[bool]) -> str:
    """A forest plot: each phrase's difference in share, with its 95% interval."""
    plt = _plt()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(6.4, 0.3 * n + 0.9))
    y = np.arange(n)[::-1]
    e, lo, hi = (100 * np.asarray(v, float) for v in (effect, low, high))
    colors = ["#c2255c" if s else "#868e96" for s in significant]
    ax.hlines(y, np.where(np.isfinite(lo), lo, e), np.where(np.isfinite(hi), hi, e), colors=colors, linewidth=1.5)
    ax.scatter(e, y, color=colors, zorder=3, s=18)
    ax.axvline(0, color="#495057", lw=0.8)
    return _finish(fig, ax, title, y, [_short(t) for t in labels],
                   "difference in share of images, percentage points (95% bootstrap interval)")


def lift_heatmap(labels: Sequence[str], counts: np.ndarray, images: int) -> str:
    """Lift of each pair (how much more often together than if independent), log scale."""
    plt = _plt()
    n = len(labels)
    diag = np.diag(counts).astype(float)
    expected = np.outer(diag, diag) / max(1, images)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(expected > 0, counts / expected, np.nan)
        np.fill_diagonal(lift, np.nan)
        shown = np.log2(np.clip(lift, 0.25, 4.0))  # never together: the colour of a quarter of chance
    fig, ax = plt.subplots(figsize=(0.26 * n + 2.6, 0.26 * n + 1.6))
    img = ax.imshow(shown, cmap="RdBu_r", vmin=-2, vmax=2)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels([_short(t, 28) for t in labels], rotation=90)
    ax.set_yticklabels([_short(t, 28) for t in labels])
    fig.colorbar(img, ax=ax, shrink=0.7, label="log2 lift (0: as often as chance)")
    return data_uri(fig)


def feature_map_figure(xy: np.ndarray, groups: Sequence[str], method: str,
                       thumbs: Sequence[tuple[int, Any]] = ()) -> Any:
    """The 2-D map of image features, coloured by group, with some thumbnails placed on it; the legend
    sits beside the axes, where no thumbnail goes."""
    plt = _plt()
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    fig, ax = plt.subplots(figsize=(7.2, 5.6))
    counts = Counter(groups)
    names = sorted(counts, key=lambda g: -counts[g])  # the largest groups keep their own colour
    colours = group_colours(names)
    labels = np.array(groups, dtype=object)
    shown = names if len(names) <= 10 else names[:9]  # as group_colours gives them their own colour
    for name in shown:
        sel = labels == name
        ax.scatter(xy[sel, 0], xy[sel, 1], s=10, alpha=0.75, color=colours[name],
                   label=f"{_short(name, 30)} ({counts[name]})", linewidths=0)
    if len(shown) < len(names):
        own = set(shown)
        sel = np.array([g not in own for g in groups])
        ax.scatter(xy[sel, 0], xy[sel, 1], s=10, alpha=0.5, color=OTHER,
                   label=f"other ({len(names) - len(shown)} groups)", linewidths=0)
    for i, im in thumbs:
        box = AnnotationBbox(OffsetImage(np.asarray(im), zoom=0.45), (xy[i, 0], xy[i, 1]), frameon=True,
                             pad=0.1, bboxprops={"edgecolor": "#adb5bd", "linewidth": 0.5})
        ax.add_artist(box)
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.margins(0.08)  # room for the thumbnails of the outermost points inside the axes
    if len(names) > 1:  # beside the axes: thumbnails cover the plot area, and would cover a legend in it
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=8, frameon=False,
                  markerscale=2)
    return fig
