"""Where a batch run's records go, for every executor: the engine and Ray alike.

:class:`RecordSink` owns the output side of a run: the record writer, what the output already holds (resume), copies
for identical images, caption files, counts, progress, and the failure manifest at the end.
:class:`~image2prompt.batch.engine.BatchJob` asks it before computing an input (:meth:`RecordSink.known`: already
done, or the same content under another name) and hands it each record; the Ray driver hands it the rows its
pipeline returns, and asks the same question of each (so an image seen twice in one run gets a copy of the first
one's record, in both).

Records are keyed by ``(content_hash, fingerprint)``: an input's key (:func:`input_key`) is the sha256 of its bytes,
and of its caption too when it came with one (a manifest's caption column), so the same picture with another caption
is computed again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ImageLoadError, one_line
from .records import OutputError, RecordWriter, copy_record, make_record, record_key
from .retry import write_run
from .sidecars import SidecarOptions, write_sidecar

if TYPE_CHECKING:  # pragma: no cover
    from ..features import Features
    from ..interrogator import Interrogator
    from ..results import Result

__all__ = ["Entry", "RecordSink", "add_scores", "check_retry", "failure_manifest_path", "feature_path", "finish_result",
           "input_key", "read_input", "record_prompt", "same_source", "store_features", "write_failure_manifest"]

log = logging.getLogger(__name__)


def input_key(data: bytes, caption: str | None = None) -> str:
    """The ``content_hash`` of an input: sha256 hex of its bytes, or of its bytes and the caption it came with (a
    result depends on both)."""
    h = hashlib.sha256(data)
    if caption is not None:
        h.update(b"\x00caption\x00" + caption.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def read_input(source: str, read: Callable[[], bytes] | None) -> tuple[bytes | None, str | None]:
    """An input's bytes, or why there are none (one line naming it): how every executor reads."""
    if read is None:
        return None, f"{source}: nothing to read"
    try:
        return bytes(read()), None
    except ImageLoadError as err:
        return None, one_line(err)
    except Exception as err:
        log.debug("reading %s failed", source, exc_info=True)
        return None, f"{source}: could not read ({one_line(err) or type(err).__name__})"


@dataclass
class Entry:
    """One input as the sink sees it: its name, its local file (for a caption file), its key."""

    source: str
    path: Path | None = None
    content_hash: str | None = None


def failure_manifest_path(output: str | os.PathLike[str]) -> Path:
    """``FILE.failed.txt`` beside the output: one failed source per line (a rerun can take it as input)."""
    p = Path(output)
    return p.with_name(p.name + ".failed.txt")


def feature_path(folder: str | os.PathLike[str], content_hash: str) -> Path:
    """Where ``--store-features`` keeps one image's features: ``DIR/<hash[:2]>/<hash>.safetensors``."""
    return Path(folder) / content_hash[:2] / f"{content_hash}.safetensors"


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


def add_scores(ic: Interrogator, result: Any, features: Features, top_n: int) -> None:
    """``--store-scores K`` for one result: the top ``top_n`` phrases per category, scored from the features after
    the search, as ``result.trace.top`` (a trace the settings asked for keeps its steps)."""
    from ..results import Trace

    top = ic.analyze_features(features, top_n).categories
    if result.trace is None:
        result.trace = Trace(top=top)
    else:
        result.trace.top = top


def finish_result(ic: Interrogator, entry: Entry, fingerprint: str, result: Result, features: Features | None, *,
                  store: str | os.PathLike[str] | None, scores_top: int | None) -> dict[str, Any]:
    """A computed result's record, with its side outputs (stored features, scores): what the process that holds the
    features does, the engine's or a Ray search actor."""
    if store is not None and features is not None and entry.content_hash:
        store_features(store, features, entry.content_hash)
    if scores_top is not None and features is not None:
        add_scores(ic, result, features, scores_top)
    return make_record(entry.source, entry.content_hash, fingerprint, result, None, scores=scores_top is not None)


def record_prompt(record: dict[str, Any]) -> str | None:
    """The prompt of an ok record, nested (JSONL) or flat (CSV, Parquet)."""
    if not record.get("ok"):
        return None
    res = record.get("result")
    return res.get("prompt") if isinstance(res, dict) else record.get("prompt")


class RecordSink:
    """The output side of one batch run (see the module docstring).

    ``stats`` is the run's :class:`~image2prompt.batch.engine.BatchStats` (counted here); ``sidecar`` writes a
    caption file beside each local image, with ``caption_fits`` (a function that returns a caption-line check,
    called once when first needed) for trigger words; ``scores`` is whether this run keeps scores (records already
    done without them are counted in ``unscored``); ``on_error`` gets each error line (else it is logged);
    ``progress`` gets the stats after each input (else they are logged every ``log_every`` s).
    """

    def __init__(self, writer: RecordWriter, fingerprint: str, stats: Any, *, sidecar: SidecarOptions | None = None,
                 caption_fits: Callable[[], Callable[[str], bool] | None] | None = None, scores: bool = False,
                 on_error: Callable[[str], None] | None = None, progress: Callable[[Any], None] | None = None,
                 on_record: Callable[[dict[str, Any]], None] | None = None, log_every: float = 30.0) -> None:
        self.writer = writer
        self.fingerprint = fingerprint
        self.stats = stats
        self.sidecar = sidecar
        self.scores = scores
        self.unscored = 0
        self.on_error = on_error
        self.progress = progress
        self.on_record = on_record
        self.log_every = log_every
        self._caption_fits = caption_fits
        self._fits: Callable[[str], bool] | None = None
        self._fits_known = False
        self._no_sidecar_said = False
        self._logged_at = time.monotonic()

    # -- before computing --------------------------------------------------------------------
    def known(self, entry: Entry) -> bool:
        """Whether the output already holds this input's content under this run's fingerprint. Then it is handled
        here: skipped (its own record, with a caption file if asked for), or the stored record copied under its
        name. False: it must be computed."""
        fp, h = self.fingerprint, entry.content_hash
        if h is None:  # unreadable: keyed by source
            if not self.writer.has_key((entry.source, fp)):
                return False
            self.stats.skipped += 1
        elif not self.writer.has_key((h, fp)):
            return False
        elif self.writer.has_source(entry.source, fp, h):
            self.stats.skipped += 1
            if self.scores and not self.writer.has_scores(h, fp):
                self.unscored += 1
            if self.sidecar is not None and entry.path is not None:  # --sidecar after a run without it
                stored = self.writer.find(h, fp)
                if stored is not None:
                    self._write_sidecar(entry, record_prompt(stored))
        else:
            stored = self.writer.find(h, fp)
            if stored is None:
                log.warning("%s: the output holds a record of its content that could not be read back", entry.source)
                return False
            self.copy(stored, entry)  # the same content under another name
        self.tick()
        return True

    # -- records -----------------------------------------------------------------------------
    def put(self, entry: Entry, record: dict[str, Any]) -> None:
        """A record computed in this run (a result or an error), with its caption file."""
        if self._write(entry, record):
            self.stats.done += 1

    def error(self, entry: Entry, text: str) -> dict[str, Any]:
        """An input that failed before or in the model: its error record (returned, for copies)."""
        record = make_record(entry.source, entry.content_hash, self.fingerprint, None, text)
        self.put(entry, record)
        return record

    def copy(self, stored: dict[str, Any], entry: Entry) -> None:
        """``stored`` (the record of identical content) under this input's name."""
        record = copy_record(stored, entry.source)
        record["content_hash"] = entry.content_hash
        if self._write(entry, record):
            self.stats.copied += 1

    def _write(self, entry: Entry, record: dict[str, Any]) -> bool:
        """Write ``record`` with its caption file; an error record is counted and reported here. True when ok."""
        self._write_sidecar(entry, record_prompt(record))
        self.writer.write(record)
        if self.on_record is not None:
            self.on_record(record)
        if record.get("ok"):
            return True
        self.stats.failed += 1
        if self.on_error is not None:
            self.on_error(str(record.get("error")))
        else:
            log.info("%s", record.get("error"))
        return False

    def _write_sidecar(self, entry: Entry, prompt: str | None) -> None:
        if self.sidecar is None or prompt is None:
            return
        if entry.path is None:
            if not self._no_sidecar_said:
                self._no_sidecar_said = True
                log.warning("no caption files for inputs that are not local files (URLs, tar members), "
                            "such as %s", entry.source)
            return
        if not self._fits_known:
            self._fits_known = True
            self._fits = self._caption_fits() if self._caption_fits is not None else None
        try:
            outcome = write_sidecar(entry.path, prompt, self.sidecar, self._fits)
        except OSError as err:
            outcome = "failed"
            log.warning("%s: cannot write its caption file (%s)", entry.source, err.strerror or err)
        self.stats.sidecars[outcome] = self.stats.sidecars.get(outcome, 0) + 1

    # -- the end of a run --------------------------------------------------------------------
    def keep_unreached(self, failed_before: list[dict[str, Any]], reached: set[str] | None) -> None:
        """A retry writes back the error records it dropped of the inputs it did not reach (a subset of the inputs,
        or a run stopped early: ``reached`` None): they are still failing, with their own errors. A run stopped
        early keeps every one that has no record now."""
        for rec in failed_before:
            if (reached is not None and same_source(str(rec.get("source") or "")) in reached) \
                    or self.writer.has_key(record_key(rec)):
                continue
            try:
                self.writer.write(rec)
            except (OSError, ValueError) as err:
                log.warning("cannot keep the error record of %s (%s)", rec.get("source"), err)
                return

    def tick(self) -> None:
        if self.progress is not None:
            self.progress(self.stats)
            return
        now = time.monotonic()
        if now - self._logged_at >= self.log_every:
            self._logged_at = now
            s = self.stats
            log.info("%d inputs so far: %d done, %d copied, %d already done, %d failed (%.2f images/s)",
                     s.seen, s.done, s.copied, s.skipped, s.failed, s.rate)

    def warn_unscored(self) -> None:
        if self.unscored:
            log.warning("%d image%s already done %s no scores: --store-scores keeps them for the images a run "
                        "computes; write to another output to score every image", self.unscored,
                        "" if self.unscored == 1 else "s", "has" if self.unscored == 1 else "have")


def check_retry(writer: RecordWriter, fingerprint: str, output: str | os.PathLike[str]) -> None:
    """A retry whose settings are not those of any failed input would retry nothing: refuse it."""
    others = [f for f in writer.error_fingerprints() if f != fingerprint]
    if others and not writer.error_sources(fingerprint):
        raise OutputError(f"{output}: its failed inputs ran with other settings or models (fingerprint "
                          f"{', '.join(others)}, not {fingerprint}); retry them with the settings of that run")


def same_source(source: str) -> str:
    """A source as a retry compares it: a path normalised (a failure list's ``out/../a.png`` is ``a.png``)."""
    return source if "://" in source else os.path.normpath(source)


def write_failure_manifest(writer: RecordWriter, output: str | os.PathLike[str], fingerprint: str | None,
                           run: dict[str, Any] | None = None) -> None:
    """``FILE.failed.txt``: the sources of this fingerprint's error records, one per line as a path list reads them
    back (relative to the list's folder), written atomically. ``run``
    (:func:`image2prompt.batch.retry.describe_run`) goes beside it, in ``FILE.failed.json``: the settings and models
    ``--retry-failed`` retries them with (without it, that file is removed)."""
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
