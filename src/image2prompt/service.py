"""One model, many callers: a bounded queue in front of one model worker that micro-batches.

:class:`MicroBatcher` is what ``image2prompt serve`` (and any host that serves many clients from one loaded
:class:`~image2prompt.Interrogator`) submits work to. Callers on any thread :meth:`~MicroBatcher.submit` a decoded
image with its :class:`~image2prompt.settings.SearchSettings` and get a :class:`concurrent.futures.Future`. One
worker thread takes every request waiting in the queue (up to ``max_batch``, waiting at most ``max_wait`` seconds
for more), and:

* encodes all their images in shared forward passes: one captioner batch for those that need a caption, one
  image batch per CLIP encoder;
* groups them by settings fingerprint (the micro-batch key) and runs each group's search as one
  :meth:`~image2prompt.Interrogator.search_indexed` call, whose chains advance in lockstep and share their
  text-encoder batches;
* sets each future as soon as its image's search ends.

A request is its own: its image, caption and settings go in, its result comes out at its position; a batch that
fails is retried one request at a time, so a bad request fails alone. The queue is bounded (see
:class:`MicroBatcher`): :meth:`~MicroBatcher.submit` raises :class:`Busy` when it is full. Each image is first
reduced to what the loaded models need (:attr:`~image2prompt.Interrogator.input_side`,
:func:`image2prompt.io.images.reduce_image`), so a waiting request holds a few hundred pixels a side, not a camera's
full frame. A future cancelled before its batch starts (a timeout, a client that went away) is dropped and costs
nothing; once its batch runs it is finished and its result discarded. ``max_batch=1`` turns micro-batching off (one
request per forward pass), the baseline the load test compares against.

Only the worker thread calls the models. The library logs; it never prints.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image as PILImage

from .errors import Image2PromptError, SettingsError
from .features import Features
from .io.images import decoded_bytes, input_side_of, reduce_image
from .modes import require_caption
from .settings import SearchSettings
from .work import Failure, WorkItem, encode_items, search_items

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from .interrogator import Interrogator

__all__ = [
    "DEFAULT_QUEUE_BYTES",
    "SERVE_FORMATS",
    "SERVE_MAX_PIXELS",
    "BatcherStats",
    "Busy",
    "MicroBatcher",
    "ShuttingDown",
]

log = logging.getLogger(__name__)

Kind = Literal["search", "analyze", "caption"]

#: What a service accepts from its clients by default (``image2prompt serve``; here, not in the FastAPI app, so
#: the CLI can show them without FastAPI installed). Encoded formats (PIL names): what browsers and cameras send.
SERVE_FORMATS = ("BMP", "GIF", "JPEG", "PNG", "TIFF", "WEBP")
#: Pixels: 36 MP covers 24 MP cameras and 6000x6000 scans. A waiting request holds its image reduced
#: to what the models need (a few hundred pixels a side), and the queue's bytes are bounded too.
SERVE_MAX_PIXELS = 36_000_000
#: Bytes of decoded images the queue holds at most (Pillow: 4 bytes a pixel): 512 MiB. Reduced images are 0.2 to
#: 2.4 MB each (ViT-L/14 to BLIP-large); this caps what images that cannot be reduced (long panoramas) may hold.
DEFAULT_QUEUE_BYTES = 512 * 1024 * 1024


class Busy(Image2PromptError):
    """The queue is full: try again later (a server answers 503 with Retry-After)."""


class ShuttingDown(Image2PromptError):
    """The batcher was closed before this request ran."""


@dataclass
class _Request:
    kind: Kind
    image: Any
    settings: SearchSettings | None
    caption: str | None
    source: str | None
    top_n: int
    key: str
    future: Future[Any] = field(default_factory=Future)
    wants_caption: bool = False
    nbytes: int = 0  # what its decoded image holds, counted against max_queue_bytes


@dataclass
class BatcherStats:
    """Counts since the batcher started (for /v1/stats and the load test)."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0  # Busy
    dropped: int = 0  # cancelled before their batch ran
    batches: int = 0  # encode passes (each a micro-batch of requests)
    largest_batch: int = 0
    queued: int = 0  # waiting now
    held_bytes: int = 0  # decoded images submitted and not yet through their batch

    @property
    def mean_batch(self) -> float:
        ran = self.completed + self.failed
        return ran / self.batches if self.batches else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"submitted": self.submitted, "completed": self.completed, "failed": self.failed,
                "rejected": self.rejected, "dropped": self.dropped, "batches": self.batches,
                "largest_batch": self.largest_batch, "mean_batch": round(self.mean_batch, 3),
                "queued": self.queued, "held_bytes": self.held_bytes}


_STOP = object()


class MicroBatcher:
    """A bounded queue in front of one model worker (see the module docstring).

    ``max_batch`` requests at most go through one encode (1: no micro-batching); ``max_wait`` seconds is how long
    the worker waits for more once it has one request (0: it takes only what is already queued); ``max_queue``
    requests at most wait, holding at most ``max_queue_bytes`` of decoded images (counted from submit until their
    batch has run; None: no byte limit; a request is always let into an empty queue, however large its image). Call
    :meth:`start` (or use it as a context manager) and :meth:`close` when done.
    """

    def __init__(self, interrogator: Interrogator, *, max_batch: int = 16, max_wait: float = 0.005,
                 max_queue: int = 64, max_queue_bytes: int | None = DEFAULT_QUEUE_BYTES) -> None:
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue),
                            ("max_queue_bytes", max_queue_bytes)):
            if value is None and name == "max_queue_bytes":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingsError(f"{name} must be a positive integer, got {value!r}")
        if not max_wait >= 0:  # NaN too
            raise SettingsError(f"max_wait must be >= 0 seconds, got {max_wait!r}")
        self.interrogator = interrogator
        self.max_batch = max_batch
        self.max_wait = float(max_wait)
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self._held_bytes = 0  # under _admit
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._stats = BatcherStats()
        self._lock = threading.Lock()
        self._admit = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- life cycle ------------------------------------------------------------------
    def start(self) -> MicroBatcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="image2prompt-model-worker", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking requests, fail the queued ones with :class:`ShuttingDown`, and stop the worker once its
        current batch ends."""
        with self._admit:  # no submit can slip a request in between the check and the drain
            if self._closed:
                return
            self._closed = True
        self._fail_queued()
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._fail_queued()  # what a racing submit left behind, now that no worker takes it

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Request):
                self._release([item])
                if item.future.set_running_or_notify_cancel():
                    item.future.set_exception(ShuttingDown("the server is shutting down"))
                else:
                    self._count(dropped=1)

    def __enter__(self) -> MicroBatcher:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.close()

    @property
    def stats(self) -> BatcherStats:
        with self._lock:
            return replace(self._stats, queued=self._queue.qsize(), held_bytes=self._held_bytes)

    # -- submitting --------------------------------------------------------------------
    def submit(self, image: Image.Image, settings: SearchSettings | None = None, *, caption: str | None = None,
               source: str | None = None) -> Future[Any]:
        """Queue a search of a decoded RGB image; the future's result is a :class:`~image2prompt.Result`. Raises
        :class:`Busy` when the queue is full and :class:`~image2prompt.errors.SettingsError` for settings this
        interrogator cannot run (:class:`~image2prompt.errors.CaptionRequired`: a mode that needs a caption, with no
        captioner and no caption given)."""
        settings = settings or SearchSettings()
        ip = self.interrogator
        require_caption(settings.mode, has_caption=bool(caption), has_captioner=ip.captioner is not None)
        wants = bool(not caption and ip.needs_caption(settings))
        return self._put(_Request("search", image, settings, caption or None, source, 0,
                                  ip.fingerprint(settings), wants_caption=wants))

    def submit_analyze(self, image: Image.Image, top_n: int = 5, *, source: str | None = None) -> Future[Any]:
        """Queue an analysis (the top ``top_n`` phrases per category); the result is an
        :class:`~image2prompt.Analysis`."""
        if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
            raise SettingsError(f"top must be a positive integer, got {top_n!r}")
        return self._put(_Request("analyze", image, None, None, source, top_n, f"analyze:{top_n}"))

    def submit_caption(self, image: Image.Image, *, source: str | None = None) -> Future[Any]:
        """Queue a caption only; the result is the caption (a str)."""
        if self.interrogator.captioner is None:
            raise SettingsError("no caption model is loaded on this server")
        return self._put(_Request("caption", image, None, None, source, 0, "caption", wants_caption=True))

    def _put(self, request: _Request) -> Future[Any]:
        if isinstance(request.image, PILImage.Image):
            request.image = reduce_image(request.image, input_side_of(self.interrogator))
            request.nbytes = decoded_bytes(request.image)
        try:
            with self._admit:
                if self._closed:
                    raise ShuttingDown("the server is shutting down")
                cap = self.max_queue_bytes
                if cap is not None and self._held_bytes and self._held_bytes + request.nbytes > cap:
                    self._count(rejected=1)
                    raise Busy(f"the queue is full ({self._held_bytes} bytes of images waiting, limit {cap}); "
                               "try again shortly")
                self._queue.put_nowait(request)
                self._held_bytes += request.nbytes
        except queue.Full:
            self._count(rejected=1)
            raise Busy(f"the queue is full ({self.max_queue} requests waiting); try again shortly") from None
        self._count(submitted=1)
        return request.future

    def _release(self, requests: list[_Request]) -> None:
        """The worker is done with these requests: their images no longer count, nor are they held."""
        with self._admit:
            for r in requests:
                self._held_bytes -= r.nbytes
                r.nbytes = 0
                r.image = None

    # -- the worker ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._gather(first)
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            self._count(dropped=len(batch) - len(live))
            try:
                if live:
                    try:
                        self._run(live)
                    except BaseException as err:  # never let the worker die with futures pending
                        log.exception("model worker: a batch failed outside its requests")
                        for r in live:
                            if not r.future.done():
                                r.future.set_exception(err)
            finally:
                self._release(batch)  # not held while the worker waits for the next one
                del batch, live, first
            if stop:
                return

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                left = deadline - time.monotonic()
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self, batch: list[_Request]) -> None:
        """Encode the micro-batch together, then search each fingerprint group together (:mod:`image2prompt.work`: a
        failed batch is retried one request at a time, and a request's failure goes to its own future)."""
        with self._lock:
            self._stats.batches += 1
            self._stats.largest_batch = max(self._stats.largest_batch, len(batch))
        started = time.perf_counter()
        items = [WorkItem(i, r.source or "image", r.image, r.caption, r.wants_caption, meta=r)
                 for i, r in enumerate(batch)]
        groups: dict[str, list[tuple[WorkItem, Features]]] = {}
        for item, got in zip(items, encode_items(self.interrogator, items)):
            if isinstance(got, Failure):
                self._fail(item.meta, got.error)
            else:
                groups.setdefault(item.meta.key, []).append((item, got))
        for members in groups.values():
            self._finish_group(members)
        for r in batch:  # a safety net: no caller waits forever on a request the worker skipped
            if not r.future.done():
                self._fail(r, RuntimeError("the model worker produced no result for this request"))
        log.debug("micro-batch of %d in %.1f ms (%d groups)", len(batch),
                  1000 * (time.perf_counter() - started), len(groups))

    def _finish_group(self, members: list[tuple[WorkItem, Features]]) -> None:
        first: _Request = members[0][0].meta
        if first.kind == "caption":
            for item, f in members:
                self._done(item.meta, f.caption)
            return
        if first.kind == "analyze":
            for item, f in members:
                try:
                    self._done(item.meta, self.interrogator.analyze_features(f, item.meta.top_n))
                except Exception as err:  # noqa: BLE001  a request's failure goes to its future
                    self._fail(item.meta, err)
            return
        assert first.settings is not None
        for j, outcome in search_items(self.interrogator, [it for it, _ in members], [f for _, f in members],
                                       first.settings):
            request = members[j][0].meta
            if isinstance(outcome, Failure):
                self._fail(request, outcome.error)
            else:
                self._done(request, outcome)

    def _done(self, request: _Request, value: Any) -> None:
        request.future.set_result(value)
        self._count(completed=1)

    def _fail(self, request: _Request, err: BaseException) -> None:
        if not isinstance(err, Image2PromptError):
            log.error("request %s failed", request.source or "?", exc_info=err)
        request.future.set_exception(err)
        self._count(failed=1)

    def _count(self, **add: int) -> None:
        with self._lock:
            for name, n in add.items():
                setattr(self._stats, name, getattr(self._stats, name) + n)
