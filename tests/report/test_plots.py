"""The report's figures: the feature map's legend and colours."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the report extra is not installed")

from image2prompt.report.plots import feature_map_figure


def _lab(rgb: tuple[float, ...]) -> np.ndarray:
    """CIELAB (D65) of an sRGB colour, for colour differences as seen (CIE76 delta E)."""
    c = np.asarray(rgb[:3], float)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ lin
    f = np.cbrt(np.maximum(xyz / np.array([0.95047, 1.0, 1.08883]), (6 / 29) ** 3))
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _map(n_groups: int, per_group: int = 12):
    from PIL import Image

    rng = np.random.default_rng(0)
    groups = [f"group {g}" for g in range(n_groups) for _ in range(per_group)]
    xy = rng.uniform(0, 1, (len(groups), 2))
    thumbs = [(i, Image.new("RGB", (48, 48), (200, 120, 40))) for i in range(0, len(groups), 3)]
    fig = feature_map_figure(xy, groups, "PCA", thumbs)
    fig.canvas.draw()
    return fig


def test_the_legend_is_clear_of_the_thumbnails():
    from matplotlib.offsetbox import AnnotationBbox

    fig = _map(10)
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    boxes = [a.get_window_extent(renderer) for a in ax.artists if isinstance(a, AnnotationBbox)]
    assert len(boxes) == 40
    assert not [b for b in boxes if b.overlaps(legend)]
    assert not ax.get_window_extent(renderer).overlaps(legend)  # beside the plot, not on it
    assert len(ax.get_legend().get_texts()) == 10


def test_group_colours_are_a_qualitative_palette_without_near_duplicates():
    for n in (10, 14):
        fig = _map(n)
        colours = [tuple(c.get_facecolor()[0][:3]) for c in fig.axes[0].collections]
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert len(colours) == min(n, 10) and len(set(colours)) == len(colours)
        lab = [_lab(c) for c in colours]
        closest = min(np.linalg.norm(a - b) for i, a in enumerate(lab) for b in lab[i + 1:])
        assert closest > 20, (n, closest)  # tab10's closest pair is 27.7 apart; two crimsons were 9.5
        if n > 10:  # nine groups keep a hue each, the rest share the grey
            assert labels[-1] == "other (5 groups)"
