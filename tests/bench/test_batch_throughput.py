"""bench/batch_throughput.py: the rate while both implementations ran counts only that window."""

from __future__ import annotations

import pytest

from bench import batch_throughput


def test_overlap_rates_count_only_the_seconds_both_ran() -> None:
    # ours starts at 10 and finishes 4 images by 20; the reference started at 0, finished one
    # image at 5 (before ours started), two inside the window and one after ours was done
    ref = {"start": 0.0, "done_at": [5.0, 12.0, 19.0, 30.0]}
    ours = {"start": 10.0, "done_at": [12.0, 14.0, 16.0, 20.0]}
    secs, r, o = batch_throughput.overlap_rates(ref, ours)
    assert secs == pytest.approx(10.0)
    assert r == pytest.approx(0.2) and o == pytest.approx(0.4)


def test_overlap_rates_need_a_window() -> None:
    assert batch_throughput.overlap_rates({"start": 0.0, "done_at": [1.0]}, {"start": 5.0, "done_at": [6.0]}) is None
    assert batch_throughput.overlap_rates({"start": 0.0, "done_at": []}, {"start": 0.0, "done_at": [3.0]}) is None
