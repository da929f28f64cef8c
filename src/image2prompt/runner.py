"""One pipeline from inputs to records, shared by every front end (CLI, server, ComfyUI nodes).

:class:`Runner` takes image sources (paths, folders, globs, URLs, bytes, PIL images,
numpy arrays or torch tensors, ``[B,H,W,C]`` batches), decodes them in worker threads
ahead of the model with a bounded prefetch, batches the decoded images through
:meth:`Interrogator.encode` and :meth:`Interrogator.search_indexed`, and yields one
:class:`Record` per input: a result or a one-line error, in input order or as they
complete.

A bad input never stops the run: a decode failure is an error record, and when a
batch fails in the model each of its images is retried alone so only the bad one gets
an error record. A library error that every batch would hit (a model, vocabulary or
cache problem) gives error records for the rest of its batch and is then re-raised.

The library never prints: this module only logs (``logging.getLogger(__name__)``).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Union

from PIL import Image

from .errors import ImageLoadError, SettingsError, one_line
from .features import Features
from .io import DEFAULT_MAX_PIXELS, ImageSource, expand_sources, is_array, load_image
from .io.images import decoded_bytes, input_side_of, reduce_image
from .results import Result
from .settings import SearchSettings
from .work import Failure, WorkItem, reason, run_items

if TYPE_CHECKING:  # pragma: no cover
    from .interrogator import Interrogator

__all__ = ["DEFAULT_MAX_BYTES", "ORDERS", "Record", "Runner"]

log = logging.getLogger(__name__)

#: How records come out: in input order (errors interleaved at their position) or as they complete.
ORDERS = ("input", "completion")
Order = Literal["input", "completion"]

#: Bytes of decoded images a Runner holds at most (decoded ahead and in the batch), 512 MiB.
DEFAULT_MAX_BYTES = 512 * 1024 * 1024

InterrogatorOrFactory = Union["Interrogator", Callable[[], "Interrogator"]]

# A bare item is one input, not an iterable of inputs (a str would give one per character,
# an array one per row).
_SINGLE = (str, bytes, bytearray, memoryview, os.PathLike, Image.Image, ImageSource, ImageLoadError)


@dataclass
class Record:
    """What became of one input: ``result`` when it worked, else ``error`` (one line, naming the input)."""

    index: int  # position in the expanded input stream (a folder counts once per image it holds)
    source: str  # display name: the path or URL as given or found, "<PIL.Image>", "<array 3>"...
    result: Result | None = None
    error: str | None = None
    #: The image's features (caption and vectors), with ``Runner(keep_features=True)``; not in ``to_dict``.
    features: Features | None = field(default=None, repr=False)
    #: What the input carried for its caller (``ImageSource.meta``), returned untouched; not in ``to_dict``.
    meta: Any = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None and self.result is not None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "source": self.source, "ok": self.ok, "error": self.error,
                "result": self.result.to_dict() if self.result is not None else None}


#: A decoded input waiting for its batch (the work unit's item).
_Decoded = WorkItem


class _Pending:
    """An input whose decode is in flight (or that failed before it could start)."""

    __slots__ = ("caption", "error", "future", "index", "meta", "name")

    def __init__(self, index: int, name: str, future: Future[Image.Image | ImageLoadError] | None = None,
                 error: ImageLoadError | None = None, caption: str | None = None, meta: Any = None) -> None:
        self.index, self.name, self.future, self.error = index, name, future, error
        self.caption, self.meta = caption, meta

    def done(self) -> bool:
        return self.future is None or self.future.done()

    def outcome(self) -> Image.Image | ImageLoadError:
        if self.future is None:
            assert self.error is not None
            return self.error
        return self.future.result()

    def nbytes(self) -> int:
        """What its decoded image holds once decoded (0 while decoding, or for an error)."""
        if self.future is None or not self.future.done() or self.future.cancelled():
            return 0
        out = self.future.result()
        return decoded_bytes(out) if isinstance(out, Image.Image) else 0


class _InOrder:
    """Holds records until every earlier index has been yielded."""

    def __init__(self) -> None:
        self.next = 0
        self.held: dict[int, Record] = {}

    def put(self, record: Record) -> Iterator[Record]:
        self.held[record.index] = record
        while self.next in self.held:
            yield self.held.pop(self.next)
            self.next += 1


class _AsDone:
    def put(self, record: Record) -> Iterator[Record]:
        yield record


class Runner:
    """Runs inputs through an interrogator in batches and yields one :class:`Record` per input.

    ``interrogator`` is a loaded :class:`~image2prompt.Interrogator`, or a function that
    loads one: it is then called only when the first image has decoded, so a run whose
    every input is bad loads no model (``Runner.interrogator`` holds it afterwards).

    ``settings`` are the search settings of every input (default: ``SearchSettings()``).
    ``batch_size`` decoded images go through the model together; ``workers`` threads
    decode inputs, at most ``prefetch`` of them ahead of the model (default: twice the
    batch size), so memory stays bounded and ``inputs`` may be a generator of any length.
    Each image is reduced right after decoding to what the loaded models need
    (:attr:`Interrogator.input_side`, ``reduce_to`` of :func:`image2prompt.io.load_image`), and the
    decoded images held at once (decoded ahead, and in the batch) stay under ``max_bytes``
    (None: no byte limit; one image is always let through, however large): a batch goes to the
    model early rather than go over it. A lazy interrogator is loaded at the first decoded
    image, and until then only ``workers`` inputs decode ahead (at full size, as the size the
    models need is not known yet).
    ``order`` is ``"input"`` (records in input order, errors at their position) or
    ``"completion"`` (each record as soon as it is known). ``max_pixels`` is passed to
    :func:`image2prompt.io.load_image`; ``caption`` is used for every input instead of
    generated captions. ``manage_devices=False`` stops the interrogator from moving models
    between devices during the run (for hosts that place models themselves).
    ``keep_features=True`` puts each result's :class:`~image2prompt.features.Features` in
    ``Record.features`` (to store them; off by default, so they are not held).
    """

    def __init__(
        self,
        interrogator: InterrogatorOrFactory,
        settings: SearchSettings | None = None,
        *,
        batch_size: int = 16,
        workers: int = 2,
        prefetch: int | None = None,
        order: Order = "input",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        caption: str | None = None,
        manage_devices: bool = True,
        keep_features: bool = False,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("workers", workers), ("prefetch", prefetch),
                            ("max_bytes", max_bytes)):
            if value is None and name in ("prefetch", "max_bytes"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingsError(f"{name} must be a positive integer, got {value!r}")
        if order not in ORDERS:
            raise SettingsError(f"order must be one of: {', '.join(ORDERS)}; got {order!r}")
        if settings is not None and not isinstance(settings, SearchSettings):
            raise TypeError(f"settings must be a SearchSettings, got {type(settings).__name__}")
        if _is_interrogator(interrogator):
            self._interrogator: Interrogator | None = interrogator  # type: ignore[assignment]
            self._factory: Callable[[], Interrogator] | None = None
        elif callable(interrogator):
            self._interrogator, self._factory = None, interrogator
        else:
            raise TypeError(f"expected an Interrogator or a function that loads one, "
                            f"got {type(interrogator).__name__}")
        self.settings = settings if settings is not None else SearchSettings()
        self.batch_size = batch_size
        self.workers = workers
        self.prefetch = prefetch if prefetch is not None else 2 * batch_size
        self.order: Order = order
        self.max_pixels = max_pixels
        self.caption = caption
        self.manage_devices = manage_devices
        self.keep_features = keep_features
        self.max_bytes = max_bytes
        self._captioning: ThreadPoolExecutor | None = None  # asks a caption server ahead (see _flush)
        self._ahead: tuple[list[WorkItem], Future[list[str]]] | None = None

    @property
    def interrogator(self) -> Interrogator | None:
        """The interrogator, or None while a lazy one has not been loaded yet."""
        return self._interrogator

    def run(self, inputs: Iterable[Any] | Any) -> Iterator[Record]:
        """Yield one record per input (expanded: a folder gives one per image it holds).

        ``inputs`` is anything :func:`image2prompt.io.expand_sources` takes, one input or
        an iterable of them, read lazily; :class:`ImageLoadError` items (what an earlier
        expansion yielded) become error records. Closing the iterator early stops the
        decoding threads. A library error that every batch would hit is re-raised after
        the error records of its batch; the records already yielded stand.
        """
        return self._run(inputs)

    # -- the pipeline ----------------------------------------------------------
    def _run(self, inputs: Iterable[Any] | Any) -> Iterator[Record]:
        sources = _number(inputs)
        out = _InOrder() if self.order == "input" else _AsDone()
        pending: deque[_Pending] = deque()
        batch: list[_Decoded] = []
        exhausted = False
        restore: tuple[Interrogator, bool] | None = None
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="image2prompt-decode")
        try:
            while True:
                # Before a lazy interrogator is loaded the size to reduce to is not known: only
                # `workers` inputs decode ahead (at full size) until the first one has decoded.
                ahead = self.prefetch if self._interrogator is not None else min(self.prefetch, self.workers)
                while not exhausted and len(pending) < ahead and not self._over_budget(batch, pending):
                    try:
                        index, item = next(sources)
                    except StopIteration:
                        exhausted = True
                        break
                    if isinstance(item, ImageLoadError):
                        pending.append(_Pending(index, item.source, error=item))
                    else:
                        pending.append(_Pending(index, item.name, pool.submit(self._decode, item),
                                                caption=item.caption, meta=item.meta))
                if not pending:
                    if exhausted or not batch:
                        break
                    for record in self._flush(batch):  # the batch alone holds max_bytes: run it now
                        yield from out.put(record)
                    batch = []
                    continue
                taken = self._take(pending)
                outcome = taken.outcome()
                if isinstance(outcome, ImageLoadError):
                    log.debug("could not load %s: %s", taken.name, outcome.reason)
                    yield from out.put(Record(taken.index, taken.name, error=one_line(outcome), meta=taken.meta))
                    continue
                if restore is None:
                    restore = self._prepare()
                outcome = reduce_image(outcome, self._reduce_side())  # decoded before the side was known
                if batch and self.max_bytes is not None and \
                        _batch_bytes(batch) + decoded_bytes(outcome) > self.max_bytes:
                    for record in self._flush(batch):  # early, rather than hold more than max_bytes
                        yield from out.put(record)
                    batch = []
                batch.append(WorkItem(taken.index, taken.name, outcome, taken.caption, meta=taken.meta))
                del outcome, taken
                if len(batch) >= self.batch_size:
                    for record in self._flush(batch):
                        yield from out.put(record)
                    batch = []
            if batch:
                if restore is None:
                    restore = self._prepare()
                for record in self._flush(batch):
                    yield from out.put(record)
            for record in self._flush(None):  # the batch whose captions were asked for ahead
                yield from out.put(record)
        finally:
            self._ahead = None
            if self._captioning is not None:
                self._captioning.shutdown(wait=True, cancel_futures=True)
                self._captioning = None
            pool.shutdown(wait=True, cancel_futures=True)
            if restore is not None and not self.manage_devices:
                restore[0].manage_devices = restore[1]

    def _over_budget(self, batch: list[_Decoded], pending: deque[_Pending]) -> bool:
        """Whether the decoded images held (in the batch and decoded ahead) reach max_bytes."""
        if self.max_bytes is None:
            return False
        return _batch_bytes(batch) + sum(p.nbytes() for p in pending) >= self.max_bytes

    def _reduce_side(self) -> int | None:
        return input_side_of(self._interrogator)

    def _take(self, pending: deque[_Pending]) -> _Pending:
        """The next decoded input: the oldest in input order, else whichever finished first."""
        if self.order == "input":
            return pending.popleft()
        while True:
            for k, p in enumerate(pending):
                if p.done():
                    del pending[k]
                    return p
            wait([p.future for p in pending if p.future is not None], return_when=FIRST_COMPLETED)

    def _decode(self, source: ImageSource) -> Image.Image | ImageLoadError:
        """Runs in a worker thread; returns the error instead of raising it."""
        try:
            return load_image(source, max_pixels=self.max_pixels, reduce_to=self._reduce_side())
        except ImageLoadError as err:
            return err
        except Exception as err:
            log.debug("decoding %s failed", source.name, exc_info=True)
            return ImageLoadError(source.name, f"could not load ({reason(err)})")

    def _prepare(self) -> tuple[Interrogator, bool]:
        """Load a lazy interrogator (the first image has decoded) and set its device policy for the run."""
        if self._interrogator is None:
            assert self._factory is not None
            log.debug("loading the interrogator for the first decoded image")
            loaded = self._factory()
            if not _is_interrogator(loaded):
                raise TypeError(f"the interrogator factory returned a {type(loaded).__name__}")
            self._interrogator = loaded
        ic = self._interrogator
        saved = bool(getattr(ic, "manage_devices", True))
        if not self.manage_devices:
            ic.manage_devices = False
        return ic, saved

    def _flush(self, batch: list[WorkItem] | None) -> Iterator[Record]:
        """Run ``batch`` (None: what is left). With a captioner that works elsewhere (a caption server:
        ``concurrent = True``), one batch behind: the batch's captions are asked for now, on another
        thread, and the batch before it is encoded and searched meanwhile, so the server and CLIP
        work at the same time. Other captioners share the device with CLIP: their batches run at once."""
        ic = self._interrogator
        if batch is not None:
            assert ic is not None
            self._wanted(ic, batch)
            if not getattr(getattr(ic, "captioner", None), "concurrent", False) or not any(it.generate for it in batch):
                ahead, self._ahead = self._ahead, None
                if ahead is not None:
                    yield from self._process(*ahead)
                yield from self._process(batch)
                return
            if self._captioning is None:
                self._captioning = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image2prompt-caption")
            wanting = [it for it in batch if it.generate]
            asked = self._captioning.submit(ic.caption, [it.image for it in wanting])
        ahead, self._ahead = self._ahead, ((batch, asked) if batch is not None else None)
        if ahead is not None:
            yield from self._process(*ahead)

    def _wanted(self, ic: Interrogator, batch: list[WorkItem]) -> None:
        """Each item's caption: its own, else the Runner's, else generated where the mode needs one."""
        wants = ic.needs_caption(self.settings)
        for item in batch:
            if item.caption is None:
                item.caption = self.caption
            item.generate = item.caption is None and wants

    def _process(self, batch: list[WorkItem], asked: Future[list[str]] | None = None) -> Iterator[Record]:
        """Records for one batch of decoded images (:func:`image2prompt.work.run_items`), as each
        search ends; a fatal error is raised after the records of the whole batch. ``asked``: the
        batch's captions, asked for ahead (:meth:`_flush`); if that failed, the batch is captioned
        here, by the work unit (which retries each image alone)."""
        ic = self._interrogator
        assert ic is not None  # _flush has set each item's caption and generate flag
        if asked is not None:
            wanting = [it for it in batch if it.generate]
            try:
                captions = asked.result()
            except Exception:
                log.debug("captions asked for ahead failed; asking again with the batch", exc_info=True)
            else:
                for item, caption in zip(wanting, captions):
                    item.caption, item.generate, item.captioned_by = caption, False, ic.caption_name
        fatal: BaseException | None = None
        for item, outcome, features in run_items(ic, batch, self.settings):
            if isinstance(outcome, Failure):
                if outcome.fatal and fatal is None:
                    fatal = outcome.error
                yield Record(item.index, item.source, error=outcome.text, meta=item.meta)
            else:
                yield Record(item.index, item.source, result=outcome,
                             features=features if self.keep_features else None, meta=item.meta)
        if fatal is not None:
            log.debug("stopping on a library error", exc_info=fatal)
            raise fatal


def _batch_bytes(batch: list[_Decoded]) -> int:
    return sum(decoded_bytes(d.image) for d in batch)


def _is_interrogator(obj: object) -> bool:
    return hasattr(obj, "encode") and hasattr(obj, "search_indexed")


def _number(inputs: Iterable[Any] | Any) -> Iterator[tuple[int, ImageSource | ImageLoadError]]:
    """Expand inputs lazily, one at a time, numbering what comes out.

    An input that cannot be expanded (an unsupported type) is an error item, not a crash.
    """
    items: Iterable[Any] = [inputs] if isinstance(inputs, _SINGLE) or is_array(inputs) else inputs
    index = 0
    for item in items:
        try:
            for source in expand_sources([item]):
                yield index, source
                index += 1
        except TypeError as err:
            yield index, ImageLoadError(f"<{type(item).__name__}>", one_line(err))
            index += 1
