"""``image2prompt report``: how CLIP sees a collection, from the records of ``batch`` (the ``report`` extra).

No model is loaded: the report reads the records (with ``--store-scores K``, each image's
top phrases per category; with ``--store-features DIR``, its features for the map), streams
them once with bounded memory, and writes one self-contained HTML page (figures drawn with
matplotlib and embedded) and a JSON summary.
"""

from __future__ import annotations

from .build import ReportError, ReportOptions, build_report

__all__ = ["ReportError", "ReportOptions", "build_report"]
