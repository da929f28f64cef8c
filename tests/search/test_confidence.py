"""The weak-match threshold follows the table's size (docs/confidence.md)."""

from __future__ import annotations

import numpy as np
import pytest

from image2prompt.search import chance_max_z, match_strength, weak_match, weak_threshold
from image2prompt.search.confidence import WEAK_Z_TABLE


@pytest.mark.parametrize("n", [2, 10, 120, 1000])
def test_chance_max_z_matches_simulated_normal_tables(n: int) -> None:
    rng = np.random.default_rng(n)
    simulated = rng.standard_normal((4000, n)).max(axis=1).mean()
    assert chance_max_z(n) == pytest.approx(simulated, abs=0.03)


def test_chance_max_z_grows_like_sqrt_2_ln_n() -> None:
    sizes = [2, 10, 100, 1_000, 10_000, 100_000, 1_000_000]
    values = [chance_max_z(n) for n in sizes]
    assert values == sorted(values) and chance_max_z(1) == 0.0
    for n, v in zip(sizes[3:], values[3:]):
        assert 0.8 * np.sqrt(2 * np.log(n)) < v < np.sqrt(2 * np.log(n))


def test_weak_z_is_the_threshold_at_the_reference_table_size_and_moves_with_chance() -> None:
    assert weak_threshold(4.0, WEAK_Z_TABLE) == pytest.approx(4.0)
    small = weak_threshold(4.0, 120)
    assert small == pytest.approx(4.0 - (chance_max_z(WEAK_Z_TABLE) - chance_max_z(120)))
    assert small < 3.0  # a fixed 4.0 would flag nearly every image of a 120-phrase table


def test_weak_match_flags_by_table_size() -> None:
    rng = np.random.default_rng(0)
    # a table of 120 scores where one phrase stands out by a z of about 3.2: a clear match for 120 phrases
    scores = rng.standard_normal(120) * 0.01 + 0.2
    scores[0] = scores.mean() + 3.2 * scores.std()
    strength, weak = weak_match(scores, 4.0)
    assert strength == pytest.approx(match_strength(scores))
    assert 3.0 < strength < 4.0 and not weak  # a fixed z of 4.0 would have called this weak
    assert weak_match(scores, 6.0)[1]  # a stricter setting flags it
    assert weak_match(np.array([0.3]), 4.0) == (None, False)
