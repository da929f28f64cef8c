"""The work unit every executor runs: encode a batch of items, then search them.

One policy, here only, for what happens when a batch fails:

* a batch that fails in the model is retried one item at a time, so only a bad item
  fails (:func:`encode_items`, :func:`search_items`);
* a library error that is not about one item (a model, vocabulary or cache problem:
  :func:`is_fatal`) would hit every item: the rest of the batch fails with it at once,
  untried, and the executor decides what to do next (a batch run stops, a server fails
  the requests and serves on);
* an item's failure is one line naming it (:class:`Failure`).

The executors are thin over this: :class:`~image2prompt.runner.Runner` (decoding threads, prefetch, order),
:class:`~image2prompt.service.MicroBatcher` (a queue, groups by fingerprint) and the Ray stages of
:mod:`image2prompt.batch.ray` (actor pools). Each carries its own payload through in :attr:`WorkItem.meta`, so
nothing is matched up by index afterwards. This module only logs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import CaptionRequired, Image2PromptError, ImageLoadError, one_line

if TYPE_CHECKING:  # pragma: no cover
    from .features import Features
    from .identity import ModelIdentity
    from .interrogator import Interrogator
    from .results import Result
    from .settings import SearchSettings

__all__ = ["Failure", "WorkItem", "encode_items", "failure", "is_fatal", "reason", "run_items", "search_items"]

log = logging.getLogger(__name__)


@dataclass
class WorkItem:
    """One image on its way through an executor.

    ``index`` is its position in the executor's input stream, ``source`` its display name; ``image`` the decoded RGB
    image (dropped once encoded); ``caption`` the caption it came with (typed, sent, or from a manifest's caption
    column), else None; ``generate`` whether to caption it when it has none and a caption model is loaded; ``meta``
    what the executor carries with it (returned untouched).
    """

    index: int
    source: str
    image: Any = field(default=None, repr=False)
    caption: str | None = None
    generate: bool = False
    meta: Any = field(default=None, repr=False)
    #: The captioner that wrote ``caption`` when it was generated ahead (a caption server's), else None.
    captioned_by: str | None = None


@dataclass(frozen=True)
class Failure:
    """Why one item has no result: ``text`` is one line naming the item; ``error`` the exception (a server maps its
    type to a status); ``fatal`` when every other item would fail too."""

    text: str
    error: BaseException = field(repr=False)
    fatal: bool = False


def is_fatal(err: BaseException) -> bool:
    """A library error that is not about one image (models, vocabulary, cache, settings): every later batch would
    hit it too. A bad image, or one without the caption its mode needs, is not."""
    return isinstance(err, Image2PromptError) and not isinstance(err, (ImageLoadError, CaptionRequired))


def reason(err: BaseException) -> str:
    """An exception as the words inside an error line's parentheses."""
    return one_line(err) or type(err).__name__


def failure(source: str, err: BaseException) -> Failure:
    """``err`` as one item's failure: ``SOURCE: could not interrogate (REASON)``, or the error's own line where it
    already names the item."""
    text = one_line(err)
    if not (isinstance(err, Image2PromptError) and text.startswith(f"{source}: ")):
        text = f"{source}: could not interrogate ({reason(err)})"
    return Failure(text, err, is_fatal(err))


def encode_items(ic: Interrogator, items: Sequence[WorkItem]) -> list[Features | Failure]:
    """Caption (where wanted) and encode the items in shared forward passes: one
    :class:`~image2prompt.features.Features` or :class:`Failure` per item, in order.

    A batch that fails is encoded again one item at a time; a fatal error fails the rest untried."""
    if not items:
        return []
    flags = [it.generate for it in items]
    by = [it.captioned_by for it in items]
    try:
        return list(ic.encode([it.image for it in items], [it.caption for it in items],
                              sources=[it.source for it in items],
                              generate_captions=flags[0] if len(set(flags)) == 1 else flags,
                              **({"captioned_by": by} if any(by) else {})))
    except Exception as err:
        if is_fatal(err) or len(items) == 1:
            log.debug("encoding %s failed", items[0].source if len(items) == 1 else f"{len(items)} images",
                      exc_info=True)
            return [failure(it.source, err) for it in items]
        log.info("a batch of %d images failed to encode (%s); encoding each alone", len(items), reason(err))
        log.debug("the batch failed with", exc_info=True)
    out: list[Features | Failure] = []
    for k, it in enumerate(items):
        got = encode_items(ic, [it])[0]
        out.append(got)
        if isinstance(got, Failure) and got.fatal:
            out.extend(failure(other.source, got.error) for other in items[k + 1:])
            break
    return out


def search_items(ic: Interrogator, items: Sequence[WorkItem], features: Sequence[Features],
                 settings: SearchSettings, *, identity: ModelIdentity | None = None
                 ) -> Iterator[tuple[int, Result | Failure]]:
    """Search the items' features together (their chains share text batches) and yield ``(position, result or
    Failure)`` as each search ends: every position exactly once.

    A batch that fails is searched again one item at a time (the results already yielded stand); a fatal error fails
    the rest untried. ``identity`` is the run's model identity, for a searcher that has not loaded every model the
    fingerprint names (a Ray search actor loads no captioner)."""
    n = len(items)
    if n == 0:
        return
    done: set[int] = set()
    try:
        found = ic.search_indexed(features, settings, identity=identity) if identity is not None \
            else ic.search_indexed(features, settings)
        for j, result in found:
            if 0 <= j < n and j not in done:
                done.add(j)
                yield j, result
    except Exception as err:
        rest = [j for j in range(n) if j not in done]
        if is_fatal(err) or n == 1:
            log.debug("searching %s failed", items[0].source if n == 1 else f"{n} images", exc_info=True)
            for j in rest:
                yield j, failure(items[j].source, err)
            return
        log.info("a batch of %d images failed in search (%s); searching each of its %d remaining alone",
                 n, reason(err), len(rest))
        log.debug("the batch failed with", exc_info=True)
        for k, j in enumerate(rest):
            for _, got in search_items(ic, [items[j]], [features[j]], settings, identity=identity):
                yield j, got
                if isinstance(got, Failure) and got.fatal:
                    for other in rest[k + 1:]:
                        yield other, failure(items[other].source, got.error)
                    return
        return
    for j in range(n):
        if j not in done:  # a search that yields fewer results than images
            yield j, Failure(f"{items[j].source}: could not interrogate (no result)",
                             RuntimeError("the search gave no result"))


def run_items(ic: Interrogator, items: Sequence[WorkItem], settings: SearchSettings
              ) -> Iterator[tuple[WorkItem, Result | Failure, Features | None]]:
    """:func:`encode_items` then :func:`search_items`: ``(item, result or Failure, features)`` per item, as each
    search ends (items that failed to encode first)."""
    ok: list[WorkItem] = []
    feats: list[Features] = []
    for it, got in zip(items, encode_items(ic, items)):
        if isinstance(got, Failure):
            yield it, got, None
        else:
            ok.append(it)
            feats.append(got)
    for item in items:
        item.image = None  # encoded: the pixels are no longer needed
    for j, outcome in search_items(ic, ok, feats, settings):
        yield ok[j], outcome, feats[j]

