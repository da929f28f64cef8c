"""The batch engine: inputs -> read and hash -> skip what is done -> Runner -> records, resumable.

:class:`BatchJob` runs a dataset through one :class:`~image2prompt.runner.Runner` and writes one record per input
(:mod:`image2prompt.batch.records`):

* inputs come from :func:`image2prompt.batch.inputs.iter_inputs`, lazily; a reader thread walks them and a
  small pool reads each input's bytes once and hashes them (sha256), at most ``read_ahead`` inputs ahead, so
  memory stays bounded for any number of inputs;
* what the output already holds is skipped or copied (:class:`~image2prompt.batch.sink.RecordSink`); an
  identical image later in the same run waits for the first one's record and gets a copy; everything else
  goes to the Runner as ``ImageSource(name, "bytes", data)``, so nothing is read twice;
* the interrogator is loaded only when the Runner gets its first decoded image: a run whose inputs are all
  done or all bad loads no model. The run's model identity, and so its fingerprint, is told from the model
  names (:meth:`image2prompt.identity.ModelIdentity.of_config`), once; the loaded models are checked against it;
* side outputs (features under ``store_features``: :func:`feature_path`; scores; caption files) and the
  failure manifest ``FILE.failed.txt``, with ``FILE.failed.json`` beside it, are described on :class:`BatchJob`.

The library never prints: progress goes to a ``progress`` callback when one is given and is otherwise logged (INFO)
every ``log_every`` seconds, with a summary at the end.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, cast

from ..errors import one_line
from ..identity import ModelIdentity
from ..io import DEFAULT_MAX_PIXELS, ImageSource
from ..runner import Record, Runner
from ..settings import SearchSettings
from .records import RecordWriter, open_output
from .retry import describe_run, run_outputs
from .sidecars import SidecarOptions
from .sink import (
    Entry,
    RecordSink,
    check_retry,
    failure_manifest_path,
    feature_path,
    finish_result,
    input_key,
    read_input,
    same_source,
    write_failure_manifest,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..interrogator import Config, Interrogator
    from .inputs import InputItem

__all__ = ["BatchJob", "BatchStats", "failure_manifest_path", "feature_path", "run_batch", "write_failure_manifest"]

log = logging.getLogger(__name__)

InterrogatorOrFactory = Union["Interrogator", Callable[[], "Interrogator"]]


@dataclass
class BatchStats:
    """Counts of one run, for progress and the summary."""

    seen: int = 0  # inputs taken from the input stream
    done: int = 0  # results computed in this run
    copied: int = 0  # records copied from an identical image (in this run or an earlier one)
    skipped: int = 0  # inputs the output already had
    failed: int = 0  # error records written in this run
    sidecars: dict[str, int] = field(default_factory=dict)  # write_sidecar outcome -> count
    model_loaded: bool = False
    started: float = field(default_factory=time.monotonic)
    finished: bool = False  # all inputs were taken (else: stopped early)

    @property
    def written(self) -> int:
        return self.done + self.copied + self.failed

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Records written per second in this run."""
        return self.written / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        return (f"{self.seen} input{'' if self.seen == 1 else 's'}: {self.done} done, "
                f"{self.copied} copied from identical images, "
                f"{self.skipped} already done, {self.failed} failed ({self.elapsed:.1f} s, {self.rate:.2f} images/s)")


@dataclass
class _Item(Entry):
    """One input on its way through the run: read and hashed, not yet computed."""

    data: bytes | None = None
    error: str | None = None
    caption: str | None = None


_END = object()


class _Reader:
    """Walks the inputs in a thread and reads and hashes each one's bytes in a small pool, in input order, at most
    ``ahead`` inputs ahead of the consumer."""

    def __init__(self, items: Iterator[InputItem], workers: int, ahead: int, captions: bool = False) -> None:
        self._items = items
        self._captions = captions
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, ahead))
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="image2prompt-read")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="image2prompt-inputs", daemon=True)
        self._thread.start()

    def _put(self, value: Any) -> bool:
        while not self._stop.is_set():
            with suppress(queue.Full):
                self._queue.put(value, timeout=0.1)
                return True
        return False

    def _produce(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                future: Future[_Item] = self._pool.submit(_read_and_hash, item, self._captions)
                if not self._put(future):
                    future.cancel()
                    return
        except BaseException as err:  # noqa: BLE001  the input walk itself failed: hand the error to the consumer
            self._put(err)
        finally:
            self._put(_END)

    def __iter__(self) -> Iterator[_Item]:
        while True:
            got = self._queue.get()
            if got is _END:
                return
            if isinstance(got, BaseException):
                raise got
            yield got.result()

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock the producer
            try:
                got = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(got, Future):
                got.cancel()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)


def _read_and_hash(item: InputItem, captions: bool = False) -> _Item:
    """Runs in a reader thread: the input's bytes and their key (:func:`~image2prompt.batch.sink.input_key`; with
    ``captions``, of the caption it came with too), or a one-line error."""
    out = _Item(item.source, item.path, caption=item.caption if captions else None)
    if item.error is not None:
        out.error = one_line(item.error)
        return out
    out.data, out.error = read_input(item.source, item.read)
    if out.data is not None:
        out.content_hash = input_key(out.data, out.caption)
    return out


class BatchJob:
    """One resumable batch run. Build it, then call :meth:`run` (which returns :class:`BatchStats`).

    ``inputs`` are what :func:`~image2prompt.batch.inputs.iter_inputs` takes (with ``allow_urls``, ``column`` and
    ``caption_column``), or an iterable of ``InputItem`` (``items=``). ``interrogator`` is a loaded interrogator or
    a function that loads one (called only when the first image needs the model); ``config`` lets the run's model
    identity, and so its fingerprint, be known before that (without it, a factory is called up front; a loaded
    interrogator whose identity is not the one predicted stops the run with an
    :class:`~image2prompt.identity.IdentityMismatch`). ``settings`` are the search settings. ``caption`` is every
    image's caption instead of a generated one; ``caption_column`` uses the caption each input came with (a
    manifest's column of that name, a WebDataset sample's member with that extension) instead, where it has one
    (else ``caption``, else a generated one). ``store_scores=K`` keeps each computed image's top K phrases per
    category in its record (``result.trace.top``), scored from its features after the search: the search and its
    fingerprint are those of the run without it, so adding it redoes nothing (records already done keep having no
    scores; a warning counts them). ``output`` is the file; ``fmt`` its format (default: from the extension).
    ``retry_failed`` drops the output's error records of this fingerprint first and retries them (refused with an
    :class:`OutputError` when every error record is under another fingerprint: such a retry would retry nothing);
    the error records of inputs it does not reach are written back. The run's settings, models and output options
    are kept in ``FILE.failed.json`` for a retry (:mod:`image2prompt.batch.retry`). ``progress`` is called with the
    :class:`BatchStats` after each input (else progress is logged every ``log_every`` seconds); ``on_error`` with
    each error line written (else it is logged).
    """

    def __init__(
        self,
        inputs: Sequence[str] = (),
        output: str | os.PathLike[str] = "batch.jsonl",
        *,
        interrogator: InterrogatorOrFactory,
        settings: SearchSettings | None = None,
        config: Config | None = None,
        items: Any = None,
        fmt: str | None = None,
        allow_urls: bool = False,
        column: str | None = None,
        caption_column: str | None = None,
        batch_size: int = 16,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        caption: str | None = None,
        store_features: str | os.PathLike[str] | None = None,
        store_scores: int | None = None,
        sidecar: SidecarOptions | None = None,
        retry_failed: bool = False,
        read_workers: int = 4,
        read_ahead: int | None = None,
        fsync_every: int = 64,
        fsync_seconds: float = 5.0,
        progress: Callable[[BatchStats], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        log_every: float = 30.0,
    ) -> None:
        self.settings = settings if settings is not None else SearchSettings()
        self.inputs = list(inputs)
        self.items = items
        self.output = Path(output)
        self.fmt = fmt
        self.allow_urls = allow_urls
        self.column = column
        self.caption_column = caption_column
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.caption = caption
        self.store_features = Path(store_features) if store_features is not None else None
        self.scores_top = int(store_scores) if store_scores is not None else None
        self.sidecar = sidecar
        self.retry_failed = retry_failed
        self.read_workers = read_workers
        self.read_ahead = read_ahead if read_ahead is not None else 2 * batch_size
        self.fsync_every = fsync_every
        self.fsync_seconds = fsync_seconds
        self.progress = progress
        self.on_error = on_error
        self.log_every = log_every
        self.stats = BatchStats()
        self.identity: ModelIdentity | None = None
        self.fingerprint: str | None = None
        self._given = interrogator
        self._config = config
        self._interrogator: Interrogator | None = (cast("Interrogator", interrogator) if _is_interrogator(interrogator)
                                                   else None)
        self._sink: RecordSink | None = None
        self._waiting: dict[str, list[_Item]] = {}  # content hash in flight -> identical inputs after it
        self._reached: set[str] = set()  # the sources (and manifest rows) the inputs gave

    @property
    def interrogator(self) -> Interrogator | None:
        """The interrogator, once loaded (None when the run never needed it)."""
        return self._interrogator

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> BatchStats:
        """Run to the end (or until a library error that every input would hit, which is raised)."""
        self.stats = BatchStats()
        self.identity = self._resolve_identity()
        fp = self.fingerprint = self.identity.fingerprint(self.settings)
        writer = open_output(self.output, self.fmt, fsync_every=self.fsync_every, fsync_seconds=self.fsync_seconds)
        if self.retry_failed:
            try:
                check_retry(writer, fp, self.output)
            except BaseException:
                writer.abort()
                raise
        sink = self._sink = RecordSink(writer, fp, self.stats, sidecar=self.sidecar, caption_fits=self._caption_fits,
                                       scores=self.scores_top is not None, on_error=self.on_error,
                                       progress=self.progress, log_every=self.log_every)
        reader: _Reader | None = None
        ok = False
        failed_before: list[dict[str, Any]] = []  # the error records a retry dropped
        self._reached = set()
        try:
            if self.retry_failed:
                dropped = writer.drop_errors(fp, keep=failed_before)
                if dropped:
                    log.info("retrying %d failed input%s", dropped, "" if dropped == 1 else "s")
            reader = _Reader(self._input_items(), self.read_workers, self.read_ahead,
                             captions=self.caption_column is not None)
            runner = Runner(self._load, self.settings, batch_size=self.batch_size, order="completion",
                            max_pixels=self.max_pixels, caption=self.caption,
                            keep_features=self.store_features is not None or self.scores_top is not None)
            for record in runner.run(self._feed(reader)):
                self._finish(record)
            self.stats.finished = True
            ok = True
        finally:
            if reader is not None:
                reader.close()
            if failed_before:
                sink.keep_unreached(failed_before, self._reached if self.stats.finished else None)
            try:
                if ok:
                    writer.close()
                else:
                    writer.abort()
            finally:
                self._write_manifest(writer)
                self._sink = None
        sink.warn_unscored()
        log.log(logging.DEBUG if self.progress is not None else logging.INFO, "batch done: %s", self.stats.summary())
        return self.stats

    def _input_items(self) -> Iterator[InputItem]:
        if self.items is not None:
            items: Any = self.items
        else:
            from .inputs import iter_inputs

            items = iter_inputs(self.inputs, allow_urls=self.allow_urls, column=self.column,
                                caption_column=self.caption_column)
        for item in items:
            self._reached.add(same_source(item.source))  # what a retry reached (in the reader thread)
            origin = getattr(item, "origin", None)
            if origin:
                self._reached.add(same_source(origin))
            yield item

    def _resolve_identity(self) -> ModelIdentity:
        """The run's model identity, once: the loaded interrogator's, else told from the config's names, else (a
        plugin model) the models are loaded now."""
        if self._interrogator is not None:
            return self._interrogator.identity
        if self._config is not None and (predicted := ModelIdentity.of_config(self._config)) is not None:
            return predicted
        log.debug("the model identity needs the models: loading them now")
        return self._load().identity

    def _load(self) -> Interrogator:
        """The interrogator (loaded on first call), checked against the run's identity."""
        if self._interrogator is None:
            loaded = self._given()  # type: ignore[operator]
            if not _is_interrogator(loaded):
                raise TypeError(f"the interrogator factory returned a {type(loaded).__name__}")
            if self.identity is not None:
                self.identity.check(loaded.identity)
            self._interrogator = loaded
            self.stats.model_loaded = True
        return self._interrogator

    def _feed(self, reader: _Reader) -> Iterator[ImageSource]:
        """What the Runner gets: one ImageSource per input that needs the model (others are handled here)."""
        sink = self._sink
        assert sink is not None
        for item in reader:
            self.stats.seen += 1
            if sink.known(item):
                continue
            if item.content_hash is None:  # could not be read
                sink.error(item, item.error or f"{item.source}: unreadable")
                sink.tick()
                continue
            h = item.content_hash
            if h in self._waiting:  # an identical image is in flight: copy its record when it comes
                self._waiting[h].append(item)
                continue
            self._waiting[h] = []
            data, item.data = item.data, None
            yield ImageSource(item.source, "bytes", data, caption=item.caption, meta=item)

    def _finish(self, rec: Record) -> None:
        """A Runner record: write it (and its copies for identical images waiting on it)."""
        item: _Item = rec.meta
        sink = self._sink
        assert sink is not None and self.fingerprint is not None
        if rec.ok:
            assert rec.result is not None and self._interrogator is not None
            record = finish_result(self._interrogator, item, self.fingerprint, rec.result, rec.features,
                                   store=self.store_features, scores_top=self.scores_top)
            sink.put(item, record)
        else:
            record = sink.error(item, rec.error or f"{item.source}: could not interrogate")
        for other in self._waiting.pop(item.content_hash or "", []):
            sink.copy(record, other)
        sink.tick()

    # -- side outputs -----------------------------------------------------------------------
    def _caption_fits(self) -> Callable[[str], bool] | None:
        """With trigger words (``--prefix``/``--suffix``): whether a caption line is within the prompt's token
        budget, by the models' tokenizer (loaded now if no image needed it yet)."""
        assert self.sidecar is not None
        if not (self.sidecar.prefix or self.sidecar.suffix):
            return None  # the search kept the prompt within the budget
        ic = self._load()
        budget = self.settings.max_tokens - 2  # the budget counts the start and end tokens
        return lambda text: ic.count_tokens(text) <= budget

    def _write_manifest(self, writer: RecordWriter) -> None:
        config = self._config if self._config is not None else getattr(self._interrogator, "config", None)
        outputs = run_outputs(self.sidecar, self.store_features, self.scores_top)
        run = describe_run(config, self.settings, self.caption, self.fingerprint, outputs, self.caption_column) \
            if config is not None else None
        write_failure_manifest(writer, self.output, self.fingerprint, run)


def run_batch(inputs: Sequence[str], output: str | os.PathLike[str], **options: Any) -> BatchStats:
    """``BatchJob(inputs, output, **options).run()``."""
    return BatchJob(inputs, output, **options).run()


def _is_interrogator(obj: object) -> bool:
    return hasattr(obj, "encode") and hasattr(obj, "search_indexed") and hasattr(obj, "fingerprint")
