"""The work unit: one policy for a failed batch (retry each item alone), fatal errors and error lines."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from image2prompt.errors import CaptionRequired, ImageLoadError, ModelLoadError
from image2prompt.results import Result
from image2prompt.settings import SearchSettings
from image2prompt.work import Failure, WorkItem, encode_items, is_fatal, run_items, search_items

FAST = SearchSettings(mode="fast")


class Fake:
    """encode / search_indexed over strings; ``bad`` items fail any batch they are in."""

    def __init__(self, bad_encode: set[str] = frozenset(), bad_search: set[str] = frozenset(),
                 fatal: str | None = None, drop: str | None = None) -> None:
        self.bad_encode, self.bad_search, self.fatal, self.drop = bad_encode, bad_search, fatal, drop
        self.encoded: list[list[str]] = []
        self.searched: list[list[str]] = []

    def encode(self, images: Sequence[Any], captions: Sequence[str | None], *, sources: Sequence[str],
               generate_captions: Any = True) -> list[str]:
        self.encoded.append(list(sources))
        if self.bad_encode & set(sources):
            raise ValueError("cannot encode " + ",".join(sorted(self.bad_encode & set(sources))))
        if self.fatal in sources:
            raise ModelLoadError("the model went away")
        return [f"f:{s}" for s in sources]

    def search_indexed(self, features: Sequence[str], settings: SearchSettings) -> Iterator[tuple[int, Result]]:
        names = [f[2:] for f in features]
        self.searched.append(names)
        for j, name in enumerate(names):
            if name in self.bad_search:
                raise CaptionRequired("fast", source=name)
            if name == self.drop:
                continue
            yield j, Result(prompt=f"p:{name}", mode="fast", caption=None, similarity=None, clip_model="fake",
                            caption_model=None, source=name)


def items(*names: str) -> list[WorkItem]:
    return [WorkItem(i, n, image=object()) for i, n in enumerate(names)]


def test_a_failed_batch_is_encoded_again_one_item_at_a_time() -> None:
    fake = Fake(bad_encode={"b"})
    out = encode_items(fake, items("a", "b", "c"))  # type: ignore[arg-type]
    assert fake.encoded == [["a", "b", "c"], ["a"], ["b"], ["c"]]
    assert out[0] == "f:a" and out[2] == "f:c"
    assert isinstance(out[1], Failure) and not out[1].fatal
    assert out[1].text == "b: could not interrogate (cannot encode b)"


def test_a_fatal_error_fails_the_rest_untried() -> None:
    fake = Fake(fatal="b")
    out = encode_items(fake, items("a", "b", "c"))  # type: ignore[arg-type]
    assert fake.encoded == [["a", "b", "c"]]  # not retried: every item would hit it
    assert all(isinstance(o, Failure) and o.fatal and isinstance(o.error, ModelLoadError) for o in out)
    assert [o.text for o in out if isinstance(o, Failure)] == [
        f"{s}: could not interrogate (the model went away)" for s in "abc"]


def test_a_fatal_error_while_retrying_alone_fails_the_items_after_it() -> None:
    fake = Fake(bad_encode={"a"}, fatal="b")
    out = encode_items(fake, items("a", "b", "c", "d"))  # type: ignore[arg-type]
    assert fake.encoded == [["a", "b", "c", "d"], ["a"], ["b"]]
    assert isinstance(out[0], Failure) and not out[0].fatal
    assert all(isinstance(o, Failure) and o.fatal for o in out[1:])


def test_search_retries_alone_and_a_missing_caption_fails_only_its_item() -> None:
    fake = Fake(bad_search={"b"})
    its = items("a", "b", "c")
    got = dict(search_items(fake, its, ["f:a", "f:b", "f:c"], FAST))  # type: ignore[arg-type]
    assert fake.searched == [["a", "b", "c"], ["b"], ["c"]]  # "a" was yielded before the failure: kept
    assert got[0].prompt == "p:a" and got[2].prompt == "p:c"  # type: ignore[union-attr]
    failure = got[1]
    assert isinstance(failure, Failure) and not failure.fatal  # a caption is per item, not per run
    assert failure.text.startswith("b: fast mode needs a caption")  # its own line, not wrapped again


def test_a_search_that_yields_no_result_for_an_item_is_its_failure() -> None:
    got = dict(search_items(Fake(drop="b"), items("a", "b"), ["f:a", "f:b"], FAST))  # type: ignore[arg-type]
    assert got[0].prompt == "p:a"  # type: ignore[union-attr]
    assert isinstance(got[1], Failure) and got[1].text == "b: could not interrogate (no result)"


def test_run_items_carries_each_item_through() -> None:
    its = items("a", "b", "c")
    for it, meta in zip(its, ("m0", "m1", "m2")):
        it.meta = meta
    out = {it.meta: outcome for it, outcome, _ in run_items(Fake(bad_encode={"b"}), its, FAST)}  # type: ignore[arg-type]
    assert set(out) == {"m0", "m1", "m2"}
    assert isinstance(out["m1"], Failure) and out["m2"].prompt == "p:c"  # type: ignore[union-attr]
    assert all(it.image is None for it in its)  # encoded: the pixels are let go


@pytest.mark.parametrize(("err", "fatal"), [
    (ModelLoadError("x"), True), (ImageLoadError("a.png", "corrupt"), False),
    (CaptionRequired("fast"), False), (ValueError("x"), False), (RuntimeError("x"), False),
])
def test_which_errors_are_fatal(err: BaseException, fatal: bool) -> None:
    assert is_fatal(err) is fatal
