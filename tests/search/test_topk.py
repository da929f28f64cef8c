from __future__ import annotations

import numpy as np
import pytest

from image2prompt.search import similarities, top_k_of_scores


def brute_force(scores, k, largest=True):
    keyed = sorted(range(len(scores)), key=lambda i: ((-scores[i] if largest else scores[i]), i))
    idx = keyed[: min(k, len(scores))]
    return scores[idx], np.array(idx, dtype=np.int64)


@pytest.mark.parametrize("k", [1, 3, 10, 99, 150])
@pytest.mark.parametrize("largest", [True, False])
def test_matches_brute_force(k, largest):
    rng = np.random.RandomState(k * 31)
    scores = rng.randn(99).astype(np.float16).astype(np.float32)  # fp16 rounding makes ties
    s, i = top_k_of_scores(scores, k, largest=largest)
    bs, bi = brute_force(scores, k, largest)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_array_equal(s, bs)


def test_ties_keep_table_order():
    scores = np.zeros(10, np.float32)
    scores[[2, 4, 5, 8]] = 1.0
    scores[[1, 9]] = 0.5
    assert top_k_of_scores(scores, 5)[1].tolist() == [2, 4, 5, 8, 1]
    assert top_k_of_scores(scores, 3, largest=False)[1].tolist() == [0, 3, 6]


def test_k_larger_than_table_returns_everything_ranked():
    s, idx = top_k_of_scores(np.array([0.1, 0.9, 0.5], np.float32), 10)
    assert idx.tolist() == [1, 2, 0]
    np.testing.assert_allclose(s, [0.9, 0.5, 0.1], rtol=1e-6)
    assert top_k_of_scores(np.array([1.0]), 0)[1].size == 0


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_similarities_in_chunks_equal_one_product(chunk):
    rng = np.random.RandomState(chunk)
    embeds = rng.randn(99, 8).astype(np.float16)
    q = rng.randn(8).astype(np.float32)
    np.testing.assert_allclose(similarities(q, embeds, chunk_rows=chunk), embeds.astype(np.float32) @ q,
                               rtol=1e-6, atol=1e-6)
