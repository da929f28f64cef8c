"""The batch engine: inputs -> read and hash -> skip what is done -> Runner -> records, resumable.

:class:`BatchJob` runs a dataset through one :class:`~image2prompt.runner.Runner` and
writes one record per input (:mod:`image2prompt.batch.records`):

* inputs come from :func:`image2prompt.batch.inputs.iter_inputs`, lazily; a reader
  thread walks them and a small pool reads each input's bytes once and hashes them
  (sha256), at most ``read_ahead`` inputs ahead, so memory stays bounded for any
  number of inputs;
* an input whose ``(content_hash, fingerprint)`` the output already holds is skipped
  (a record for another source with the same content is copied under this source);
  an identical image later in the same run waits for the first one's record and gets
  a copy; everything else goes to the Runner as ``ImageSource(name, "bytes", data)``,
  so nothing is read twice;
* the interrogator is loaded only when the Runner gets its first decoded image: a run
  whose inputs are all done or all bad loads no model. The fingerprint is predicted
  from the model names (:func:`image2prompt.batch.identity.predict_fingerprint`) until then;
* each result can also store its features (``store_features``: ``DIR/<h[:2]>/<h>.safetensors``)
  and its top phrases per category (``store_scores``), and write a caption file beside
  its image (``sidecar``);
* the failure manifest ``FILE.failed.txt`` (one source per line) lists the error
  records of this fingerprint; it is rewritten when the run ends, with ``FILE.failed.json``
  (the run's settings and models, what ``retry_failed`` retries with) beside it.

The library never prints: progress goes to a ``progress`` callback when one is given
and is otherwise logged (INFO) every ``log_every`` seconds, with a summary at the end.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, cast

from ..errors import ImageLoadError, one_line
from ..io import DEFAULT_MAX_PIXELS, ImageSource
from ..runner import Record, Runner
from ..settings import SearchSettings
from .identity import predict_fingerprint
from .records import OutputError, RecordWriter, copy_record, make_record, open_output, record_key
from .retry import describe_run, run_outputs, write_run
from .sidecars import SidecarOptions, write_sidecar

if TYPE_CHECKING:  # pragma: no cover
    from ..features import Features
    from ..interrogator import Config, Interrogator
    from .inputs import InputItem

__all__ = ["BatchJob", "BatchStats", "failure_manifest_path", "feature_path", "record_prompt", "run_batch"]

log = logging.getLogger(__name__)

InterrogatorOrFactory = Union["Interrogator", Callable[[], "Interrogator"]]


def store_features(directory: str | os.PathLike[str], features: Features, content_hash: str) -> None:
    """``--store-features``: ``DIR/<hash[:2]>/<hash>.safetensors``, once per content; a failure is a warning."""
    path = feature_path(directory, content_hash)
    if path.exists():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        features.save(path)
    except OSError as err:
        log.warning("cannot store the features of %s in %s (%s)", features.source, path, err.strerror or err)


def failure_manifest_path(output: str | os.PathLike[str]) -> Path:
    """``FILE.failed.txt`` beside the output: one failed source per line (a rerun can take it as input)."""
    p = Path(output)
    return p.with_name(p.name + ".failed.txt")


def feature_path(folder: str | os.PathLike[str], content_hash: str) -> Path:
    """Where ``--store-features`` keeps one image's features: ``DIR/<hash[:2]>/<hash>.safetensors``."""
    return Path(folder) / content_hash[:2] / f"{content_hash}.safetensors"


def record_prompt(record: dict[str, Any]) -> str | None:
    """The prompt of an ok record, nested (JSONL) or flat (CSV, Parquet)."""
    if not record.get("ok"):
        return None
    res = record.get("result")
    if isinstance(res, dict):
        return res.get("prompt")
    return record.get("prompt")


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
class _Item:
    """One input on its way through the run."""

    source: str
    path: Path | None
    content_hash: str | None = None
    data: bytes | None = None
    error: str | None = None


_END = object()


class _Reader:
    """Walks the inputs in a thread and reads and hashes each one's bytes in a small pool,
    in input order, at most ``ahead`` inputs ahead of the consumer."""

    def __init__(self, items: Iterator[InputItem], workers: int, ahead: int) -> None:
        self._items = items
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, ahead))
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="image2prompt-read")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="image2prompt-inputs", daemon=True)
        self._thread.start()

    def _put(self, value: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                future: Future[_Item] = self._pool.submit(_read_and_hash, item)
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


def _read_and_hash(item: InputItem) -> _Item:
    """Runs in a reader thread: the input's bytes and their sha256, or a one-line error."""
    out = _Item(item.source, item.path)
    if item.error is not None:
        out.error = one_line(item.error)
        return out
    if item.read is None:
        out.error = f"{item.source}: nothing to read"
        return out
    try:
        data = item.read()
    except ImageLoadError as err:
        out.error = one_line(err)
        return out
    except Exception as err:
        log.debug("reading %s failed", item.source, exc_info=True)
        out.error = f"{item.source}: could not read ({one_line(err) or type(err).__name__})"
        return out
    out.data = bytes(data)
    out.content_hash = hashlib.sha256(out.data).hexdigest()
    return out


class BatchJob:
    """One resumable batch run. Build it, then call :meth:`run` (which returns :class:`BatchStats`).

    ``inputs`` are what :func:`~image2prompt.batch.inputs.iter_inputs` takes (with
    ``allow_urls`` and ``column``), or an iterable of ``InputItem`` (``items=``).
    ``interrogator`` is a loaded interrogator or a function that loads one (called only
    when the first image needs the model); ``config`` lets the fingerprint be known
    before that (without it, a factory is called up front). ``settings`` are the search
    settings. ``store_scores=K`` keeps each computed image's top K phrases per category in its
    record (``result.trace.top``), scored from its features after the search: the search and
    its fingerprint are those of the run without it, so adding it redoes nothing (records
    already done keep having no scores; a warning counts them). ``output`` is the
    file; ``fmt`` its format (default: from the extension). ``retry_failed`` drops the
    output's error records of this fingerprint first and retries them (refused with an
    :class:`OutputError` when every error record is under another fingerprint: such a retry
    would retry nothing); the error records of inputs it does not reach are written back. The
    run's settings, models and output options are kept in ``FILE.failed.json`` for a retry
    (:mod:`image2prompt.batch.retry`). ``progress`` is called
    with the :class:`BatchStats` after each input (else progress is logged every
    ``log_every`` seconds); ``on_error`` with each error line written (else it is logged).
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
        settings = settings if settings is not None else SearchSettings()
        self.settings = settings
        self.inputs = list(inputs)
        self.items = items
        self.output = Path(output)
        self.fmt = fmt
        self.allow_urls = allow_urls
        self.column = column
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.caption = caption
        self.store_features = Path(store_features) if store_features is not None else None
        self.scores = store_scores is not None
        self.scores_top = int(store_scores) if store_scores is not None else None
        self._unscored = 0  # records already done, without the scores this run keeps
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
        self.fingerprint: str | None = None
        self._given = interrogator
        self._config = config
        self._interrogator: Interrogator | None = (cast("Interrogator", interrogator) if _is_interrogator(interrogator)
                                                   else None)
        self._writer: RecordWriter | None = None
        self._meta: dict[int, _Item] = {}
        self._waiting: dict[str, list[_Item]] = {}  # content hash in flight -> identical inputs after it
        self._no_sidecar_said = False
        self._logged_at = time.monotonic()
        self._reached: set[str] = set()  # the sources (and manifest rows) the inputs gave

    @property
    def interrogator(self) -> Interrogator | None:
        """The interrogator, once loaded (None when the run never needed it)."""
        return self._interrogator

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> BatchStats:
        """Run to the end (or until a library error that every input would hit, which is raised)."""
        self.stats = BatchStats()
        self.fingerprint = self._resolve_fingerprint()
        writer = self._writer = open_output(self.output, self.fmt, fsync_every=self.fsync_every,
                                            fsync_seconds=self.fsync_seconds)
        if self.retry_failed:
            try:
                self._check_retry(writer)
            except BaseException:
                writer.abort()
                self._writer = None
                raise
        reader: _Reader | None = None
        ok = False
        failed_before: list[dict[str, Any]] = []  # the error records a retry dropped
        self._reached = set()
        try:
            if self.retry_failed:
                dropped = writer.drop_errors(self.fingerprint, keep=failed_before)
                if dropped:
                    log.info("retrying %d failed input%s", dropped, "" if dropped == 1 else "s")
            reader = _Reader(self._input_items(), self.read_workers, self.read_ahead)
            runner = Runner(self._load, self.settings, batch_size=self.batch_size, order="completion",
                            max_pixels=self.max_pixels, caption=self.caption,
                            keep_features=self.store_features is not None or self.scores)
            for record in runner.run(self._feed(reader)):
                self._finish(record)
            self.stats.finished = True
            ok = True
        finally:
            if reader is not None:
                reader.close()
            if failed_before:
                self._keep_unreached(writer, failed_before)
            try:
                if ok:
                    writer.close()
                else:
                    writer.abort()
            finally:
                self._write_manifest(writer)
                self._writer = None
        if self._unscored:
            log.warning("%d image%s already done %s no scores: --store-scores keeps them for the images a run "
                        "computes; write to another output to score every image", self._unscored,
                        "" if self._unscored == 1 else "s", "has" if self._unscored == 1 else "have")
        log.log(logging.DEBUG if self.progress is not None else logging.INFO, "batch done: %s", self.stats.summary())
        return self.stats

    def _input_items(self) -> Iterator[InputItem]:
        if self.items is not None:
            items: Any = self.items
        else:
            from .inputs import iter_inputs

            items = iter_inputs(self.inputs, allow_urls=self.allow_urls, column=self.column)
        for item in items:
            self._reached.add(_same_source(item.source))  # what a retry reached (in the reader thread)
            origin = getattr(item, "origin", None)
            if origin:
                self._reached.add(_same_source(origin))
            yield item

    def _check_retry(self, writer: RecordWriter) -> None:
        """A retry whose settings are not those of any failed input would retry nothing: refuse it."""
        fp = self._fp()
        others = [f for f in writer.error_fingerprints() if f != fp]
        if others and not writer.error_sources(fp):
            raise OutputError(f"{self.output}: its failed inputs ran with other settings or models (fingerprint "
                              f"{', '.join(others)}, not {fp}); retry them with the settings of that run")

    def _keep_unreached(self, writer: RecordWriter, failed_before: list[dict[str, Any]]) -> None:
        """A retry writes back the error records it dropped of the inputs it did not reach (a subset
        of the inputs, or a run stopped early): they are still failing, with their own errors. A run
        stopped early keeps every one that has no record now (its reader may have gone ahead)."""
        reached = self._reached if self.stats.finished else set()
        for rec in failed_before:
            if _same_source(str(rec.get("source") or "")) in reached or writer.has_key(record_key(rec)):
                continue
            try:
                writer.write(rec)
            except (OSError, ValueError) as err:
                log.warning("cannot keep the error record of %s (%s)", rec.get("source"), err)
                return

    def _resolve_fingerprint(self) -> str:
        if self._interrogator is not None:
            return self._interrogator.fingerprint(self.settings)
        predicted = predict_fingerprint(self._config, self.settings) if self._config is not None else None
        if predicted is not None:
            return predicted
        log.debug("the fingerprint needs the models: loading them now")
        return self._load().fingerprint(self.settings)

    def _load(self) -> Interrogator:
        """The interrogator (loaded on first call); the real fingerprint replaces a predicted one."""
        if self._interrogator is None:
            loaded = self._given()  # type: ignore[operator]
            if not _is_interrogator(loaded):
                raise TypeError(f"the interrogator factory returned a {type(loaded).__name__}")
            self._interrogator = loaded
            self.stats.model_loaded = True
            real = loaded.fingerprint(self.settings)
            if self.fingerprint is not None and real != self.fingerprint:
                log.warning("the loaded models' fingerprint %s differs from the one predicted from their "
                            "names (%s); records from now on use %s", real, self.fingerprint, real)
            self.fingerprint = real
        return self._interrogator

    def _feed(self, reader: _Reader) -> Iterator[ImageSource]:
        """What the Runner gets: one ImageSource per input that needs the model (others are handled here)."""
        writer = self._writer
        assert writer is not None
        index = 0
        for item in reader:
            self.stats.seen += 1
            fp = self._fp()
            if item.content_hash is None:  # could not be read: keyed by source
                if writer.has_key((item.source, fp)):
                    self.stats.skipped += 1
                else:
                    self._write(make_record(item.source, None, fp, None, item.error or f"{item.source}: unreadable"))
                self._tick()
                continue
            h = item.content_hash
            if writer.has_key((h, fp)):
                if writer.has_source(item.source, fp, h):
                    self.stats.skipped += 1
                    if self.scores and not writer.has_scores(h, fp):
                        self._unscored += 1
                    if self.sidecar is not None and item.path is not None:  # --sidecar after a run without it
                        stored = writer.find(h, fp)
                        if stored is not None:
                            self._sidecar(item, record_prompt(stored))
                    self._tick()
                    continue
                stored = writer.find(h, fp)
                if stored is not None:  # the same content under another name: copy its record
                    self._copy(stored, item)
                    self._tick()
                    continue
                log.warning("%s: the record of its content could not be read back; computing it", item.source)
            if h in self._waiting:  # an identical image is in flight: copy its record when it comes
                self._waiting[h].append(_Item(item.source, item.path, h))
                continue
            self._waiting[h] = []
            self._meta[index] = _Item(item.source, item.path, h)
            index += 1
            data, item.data = item.data, None
            yield ImageSource(item.source, "bytes", data)

    def _finish(self, rec: Record) -> None:
        """A Runner record: write it (and its copies for identical images waiting on it)."""
        item = self._meta.pop(rec.index)
        fp = self._fp()
        if rec.ok:
            assert rec.result is not None
            if self.store_features is not None and rec.features is not None and item.content_hash:
                self._save_features(rec.features, item.content_hash)
            self._sidecar(item, rec.result.prompt)
            if self.scores and rec.features is not None:
                self._add_scores(rec.result, rec.features)
            record = make_record(item.source, item.content_hash, fp, rec.result, None, scores=self.scores)
            self._write(record, computed=True)
        else:
            record = make_record(item.source, item.content_hash, fp, None, rec.error)
            self._write(record)
        for other in self._waiting.pop(item.content_hash or "", []):
            self._copy(record, other)
        self._tick()

    def _copy(self, stored: dict[str, Any], item: _Item) -> None:
        record = copy_record(stored, item.source)
        record["content_hash"] = item.content_hash
        self._sidecar(item, record_prompt(record))
        if record.get("ok"):
            self.stats.copied += 1
            self._write(record, counted=True)
        else:
            self._write(record)

    def _write(self, record: dict[str, Any], *, computed: bool = False, counted: bool = False) -> None:
        assert self._writer is not None
        self._writer.write(record)
        if computed:
            self.stats.done += 1
        elif not counted and not record.get("ok"):
            self.stats.failed += 1
            if self.on_error is not None:
                self.on_error(str(record.get("error")))
            else:
                log.info("%s", record.get("error"))

    def _fp(self) -> str:
        assert self.fingerprint is not None
        return self.fingerprint

    # -- side outputs -----------------------------------------------------------------------
    def _sidecar(self, item: _Item, prompt: str | None) -> None:
        if self.sidecar is None or prompt is None:
            return
        if item.path is None:
            if not self._no_sidecar_said:
                self._no_sidecar_said = True
                log.warning("no caption files for inputs that are not local files (URLs, tar members), "
                            "such as %s", item.source)
            return
        try:
            outcome = write_sidecar(item.path, prompt, self.sidecar, self._caption_fits())
        except OSError as err:
            outcome = "failed"
            log.warning("%s: cannot write its caption file (%s)", item.source, err.strerror or err)
        self.stats.sidecars[outcome] = self.stats.sidecars.get(outcome, 0) + 1

    def _caption_fits(self) -> Callable[[str], bool] | None:
        """With trigger words (``--prefix``/``--suffix``): whether a caption line is within the
        prompt's token budget, by the models' tokenizer (loaded now if no image needed it yet)."""
        assert self.sidecar is not None
        if not (self.sidecar.prefix or self.sidecar.suffix):
            return None  # the search kept the prompt within the budget
        ic = self._load()
        budget = self.settings.max_tokens - 2  # the budget counts the start and end tokens
        return lambda text: ic.count_tokens(text) <= budget

    def _add_scores(self, result: Any, features: Features) -> None:
        """``--store-scores K``: the top K phrases per category, as ``result.trace.top``. Scored from the
        features after the search (a search with ``trace`` would also run best and turbo mode's chain
        again without the relevance floor, to list exactly what it rejected: about twice the time)."""
        assert self._interrogator is not None and self.scores_top is not None
        add_scores(self._interrogator, result, features, self.scores_top)

    def _save_features(self, features: Features, content_hash: str) -> None:
        assert self.store_features is not None
        store_features(self.store_features, features, content_hash)

    def _write_manifest(self, writer: RecordWriter) -> None:
        config = self._config if self._config is not None else getattr(self._interrogator, "config", None)
        outputs = run_outputs(self.sidecar, self.store_features, self.scores_top)
        run = describe_run(config, self.settings, self.caption, self.fingerprint, outputs) \
            if config is not None else None
        write_failure_manifest(writer, self.output, self.fingerprint, run)

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress(self.stats)
            return
        now = time.monotonic()
        if now - self._logged_at >= self.log_every:
            self._logged_at = now
            s = self.stats
            log.info("%d inputs so far: %d done, %d copied, %d already done, %d failed (%.2f images/s)",
                     s.seen, s.done, s.copied, s.skipped, s.failed, s.rate)


def write_failure_manifest(writer: RecordWriter, output: str | os.PathLike[str], fingerprint: str | None,
                           run: dict[str, Any] | None = None) -> None:
    """``FILE.failed.txt``: the sources of this fingerprint's error records, one per line as a
    path list reads them back (relative to the list's folder), written atomically. ``run``
    (:func:`image2prompt.batch.retry.describe_run`) goes beside it, in ``FILE.failed.json``: the
    settings and models ``--retry-failed`` retries them with (without it, that file is removed)."""
    if fingerprint is None:
        return
    sources = writer.error_sources(fingerprint)
    path = failure_manifest_path(output)
    if not sources and not path.exists():
        return
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for s in sources:
                f.write(_list_entry(s, path.parent) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        log.warning("%s: cannot write the failure list (%s)", path, err.strerror or err)
    write_run(output, run)


def _list_entry(source: str, folder: Path) -> str:
    """``source`` as a line of a path list in ``folder`` (which reads relative entries from its own folder)."""
    text = " ".join(source.splitlines())
    if "://" in text or os.path.isabs(text) or text.startswith("~"):
        return text
    if os.path.abspath(folder) != os.path.abspath(os.curdir):
        text = os.path.relpath(os.path.abspath(text), os.path.abspath(folder))
    if text.startswith(("#", " ", "\t")):  # a comment or stripped blanks, to the list reader
        text = os.path.join(".", text)
    return text


def _same_source(source: str) -> str:
    """A source as a retry compares it: a path normalised (a failure list's ``out/../a.png`` is ``a.png``)."""
    return source if "://" in source else os.path.normpath(source)


def run_batch(inputs: Sequence[str], output: str | os.PathLike[str], **options: Any) -> BatchStats:
    """``BatchJob(inputs, output, **options).run()``."""
    return BatchJob(inputs, output, **options).run()


def add_scores(ic: Interrogator, result: Any, features: Features, top_n: int) -> None:
    """``--store-scores K`` for one result, in every executor: the top ``top_n`` phrases per category,
    scored from the features after the search, as ``result.trace.top`` (a trace the settings asked
    for keeps its steps)."""
    from ..results import Trace

    top = ic.analyze_features(features, top_n).categories
    if result.trace is None:
        result.trace = Trace(top=top)
    else:
        result.trace.top = top


def _is_interrogator(obj: object) -> bool:
    return hasattr(obj, "encode") and hasattr(obj, "search_indexed") and hasattr(obj, "fingerprint")
