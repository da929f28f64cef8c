"""bench/batch_throughput.py: the rate while both implementations ran counts only that window."""

from __future__ import annotations

import pytest

from bench import batch_throughput


def test_overlap_rates_count_only_the_seconds_both_ran() -> None:
    # The reference started at 0 and finished images at 5 (before ours started), 12, 16, 19 and 30
    # (after ours was done); ours started at 10 and finished batches of 4 at 11, 15 and 20.
    ref = {"start": 0.0, "done_at": [5.0, 12.0, 16.0, 19.0, 30.0]}
    ours = {"start": 10.0, "done_at": [11.0] * 4 + [15.0] * 4 + [20.0] * 4}
    secs, r, o = batch_throughput.overlap_rates(ref, ours)
    assert secs == pytest.approx(10.0)
    assert r == pytest.approx(2 / 7)  # 16 and 19, in the 7 s after 12
    assert o == pytest.approx(8 / 9)  # the batches at 15 and 20, in the 9 s after 11


def test_a_batch_cut_by_the_window_edge_is_not_counted() -> None:
    # ours started first and had a batch of 16 in flight when the reference started at 10
    ref = {"start": 10.0, "done_at": [float(t) for t in range(11, 26)]}
    ours = {"start": 0.0, "done_at": [10.5] * 16 + [15.0] * 16 + [20.0] * 16}
    secs, r, o = batch_throughput.overlap_rates(ref, ours)
    assert secs == pytest.approx(10.0)  # 10 to 20, when ours finished
    assert r == pytest.approx(1.0)  # 12 to 20, one a second
    assert o == pytest.approx(32 / 9.5)  # not 48: the batch at 10.5 ran mostly before the window


def test_overlap_rates_need_two_completions_each() -> None:
    assert batch_throughput.overlap_rates({"start": 0.0, "done_at": [1.0]}, {"start": 5.0, "done_at": [6.0]}) is None
    assert batch_throughput.overlap_rates({"start": 0.0, "done_at": []}, {"start": 0.0, "done_at": [3.0]}) is None
    assert batch_throughput.overlap_rates({"start": 0.0, "done_at": [1.0, 2.0, 9.0]},
                                          {"start": 0.0, "done_at": [5.0] * 16}) is None
