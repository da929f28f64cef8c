"""Drive one chain to its end with a plain scoring function (the product drives many in lockstep)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from image2prompt.search import ChainResult, start_chain

#: score_extensions(prefix, phrases) -> similarity of f"{prefix}, {phrase}" for each phrase.
ScoreExtensions = Callable[[str, Sequence[str]], np.ndarray]


def greedy_chain(phrases: Sequence[str], score_extensions: ScoreExtensions, at_limit: Callable[[str], bool],
                 **options: Any) -> ChainResult:
    """Run one chain over ``phrases`` (deduplicated, order kept) to the end; ``options`` are
    :func:`start_chain`'s (with no ``start`` it begins at the best phrase by ``score_texts``)."""
    state = start_chain(phrases, at_limit, **options)
    if state is None:
        return ChainResult("", 0.0)
    while not state.done:
        state.advance([score_extensions(prefix, rest) if rest else np.empty(0)
                       for prefix, rest in state.requests()])
    return state.result()
