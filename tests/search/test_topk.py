from __future__ import annotations

import numpy as np
import pytest

from image2prompt.search import top_k, top_k_of_scores


def brute_force(query, embeds, k, largest=True):
    scores = embeds.astype(np.float32) @ query.astype(np.float32)
    keyed = sorted(range(len(scores)), key=lambda i: ((-scores[i] if largest else scores[i]), i))
    idx = keyed[: min(k, len(scores))]
    return scores[idx], np.array(idx, dtype=np.int64)


@pytest.mark.parametrize("chunk", [1, 5, 17, 64, 1000])
@pytest.mark.parametrize("k", [1, 3, 10, 99, 150])
@pytest.mark.parametrize("largest", [True, False])
def test_matches_brute_force_with_odd_chunks(chunk, k, largest):
    rng = np.random.RandomState(k * 31 + chunk)
    embeds = rng.randn(99, 8).astype(np.float16)
    query = rng.randn(8).astype(np.float32)
    s, i = top_k(query, embeds, k, chunk_rows=chunk, largest=largest)
    bs, bi = brute_force(query, embeds, k, largest)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(s, bs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_ties_keep_table_order(chunk):
    # Rows 2, 4, 5 and 8 tie for the top score; a chunk boundary falls between them.
    embeds = np.zeros((10, 2), np.float32)
    embeds[[2, 4, 5, 8], 0] = 1.0
    embeds[[1, 9], 0] = 0.5
    query = np.array([1.0, 0.0], np.float32)
    _, idx = top_k(query, embeds, 5, chunk_rows=chunk)
    assert idx.tolist() == [2, 4, 5, 8, 1]
    _, idx = top_k(query, embeds, 3, chunk_rows=chunk, largest=False)
    assert idx.tolist() == [0, 3, 6]


def test_k_larger_than_table_returns_everything_ranked():
    embeds = np.array([[0.1], [0.9], [0.5]], np.float32)
    s, idx = top_k(np.array([1.0], np.float32), embeds, 10)
    assert idx.tolist() == [1, 2, 0]
    np.testing.assert_allclose(s, [0.9, 0.5, 0.1], rtol=1e-6)
    assert top_k(np.array([1.0]), embeds, 0)[1].size == 0


def test_scores_variant_agrees_with_chunked():
    rng = np.random.RandomState(0)
    embeds = rng.randn(500, 16).astype(np.float16)
    q = rng.randn(16).astype(np.float32)
    scores = embeds.astype(np.float32) @ q
    for largest in (True, False):
        a = top_k(q, embeds, 37, chunk_rows=13, largest=largest)[1]
        b = top_k_of_scores(scores, 37, largest=largest)[1]
        np.testing.assert_array_equal(a, b)
