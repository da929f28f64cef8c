"""``image2prompt batch --ray``: the driver of the batch job on Ray Data, over one machine or a cluster.

:func:`run_on_ray` runs what the single-process batch engine runs (same inputs, same
records, same output file, same resume) as a Ray Data pipeline of four stages::

    driver: iter_inputs -> input rows (source, path or pickled read(), error)   [no bytes read]
      |  from_arrow: blocks of rows
      v
    read + sha256 + resume filter + decode     plain function, CPU tasks (map_batches)
      |  rows: kind (image/error/copy), source, path, content_hash, error, image (HWC uint8)
      v
    encode                                     actor pool (an Interrogator per actor), GPUs
      |  rows: ..., caption, caption_model, vec_0..vec_E (float32)
      v
    search                                     second actor pool, CPUs (or GPUs on request)
      |  rows: kind, source, path, content_hash, record (make_record(...) as JSON)
      v
    driver: iter_rows -> RecordSink (the engine's): records, copies, caption files, FILE.failed.txt

Images are read, hashed and decoded in Ray tasks, never on the driver (except the members of WebDataset shards,
which :func:`~image2prompt.batch.inputs.iter_inputs` reads as it streams the tar). Bad inputs travel through the
stages as error rows and become error records. Records are written on the driver through the engine's
:class:`~image2prompt.batch.sink.RecordSink`, so the file formats, the torn-tail repair, the resume keys and the
copies for identical images are the single-process path's. See ``docs/scale.md``.

The stages are in :mod:`.stages`, joining and fitting the cluster in :mod:`.cluster`, Ray version shims in
:mod:`.shims`. Ray is imported only inside functions (the optional ``ray`` extra). This module only logs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ...errors import SettingsError
from ...identity import ModelIdentity
from ...io import DEFAULT_MAX_PIXELS
from ...settings import SearchSettings
from ...work import reason
from ..engine import BatchStats
from ..records import RecordWriter, open_output
from ..retry import describe_run, run_outputs
from ..sidecars import SidecarOptions
from ..sink import Entry, RecordSink, check_retry, write_failure_manifest
from .cluster import (
    ACTOR_MAX_RESTARTS,
    DECODE_CPUS,
    MAX_TASK_RETRIES,
    _driver_error,
    _fit_cluster,
    _import_ray,
    _init_ray,
)
from .shims import _configure, _fault_args, _map_batches, _restore
from .stages import KIND_COPY, DoneSet, Encoder, Searcher, decode_batch, input_rows

if TYPE_CHECKING:  # pragma: no cover
    from ...interrogator import Config

__all__ = ["RunSummary", "run_on_ray"]

log = logging.getLogger(__name__)


@dataclass
class RunSummary(BatchStats):
    """What a Ray run did, in the batch engine's counts (:class:`~image2prompt.batch.engine.BatchStats`).

    ``skipped`` is known only at the end: done inputs are dropped inside the Ray tasks.
    """

    seconds: float = 0.0  # how long the run took (set when it ends)
    fingerprint: str | None = None  # the run's fingerprint (settings + models + vocabulary)

    @property
    def elapsed(self) -> float:
        return self.seconds or (time.monotonic() - self.started)


def run_on_ray(
    inputs: Sequence[str],
    *,
    output: str | os.PathLike[str],
    config: Config,
    settings: SearchSettings,
    address: str | None = None,
    encode_actors: int = 1,
    search_actors: int = 1,
    num_gpus_per_actor: float = 0,
    batch_size: int = 16,
    allow_urls: bool = False,
    column: str | None = None,
    caption_column: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    caption: str | None = None,
    fmt: str | None = None,
    store_scores: int | None = None,
    store_features: str | os.PathLike[str] | None = None,
    sidecar: SidecarOptions | None = None,
    retry_failed: bool = False,
    num_cpus_per_actor: float = 1,
    num_gpus_per_search_actor: float = 0,
    progress: Callable[[RunSummary], None] | None = None,
    on_error: Callable[[str], None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Interrogate ``inputs`` on Ray Data and append one record per new input to ``output``.

    The options, the callbacks (on the driver) and the side outputs mean what they mean to
    :class:`~image2prompt.batch.engine.BatchJob`, and the records, resume, copies, retry and
    ``FILE.failed.txt``/``FILE.failed.json`` are the same; ``on_record`` gets each record written. Here
    ``store_scores`` and ``store_features`` are done by the search actors (every node must see the
    ``store_features`` folder); caption files are written on the driver.

    Ray: ``address`` is a cluster (``HEAD:6379``, ``auto``, ``ray://...``); None starts a local instance (an
    instance this process already joined is used as it is). ``encode_actors`` actors load the models with
    ``num_gpus_per_actor`` GPUs each (fractions share a GPU) and encode ``batch_size`` images at a time;
    ``search_actors`` actors search on CPUs (or on ``num_gpus_per_search_actor`` GPUs each). Every actor reserves
    ``num_cpus_per_actor`` CPUs, and each decode task 1: where the actors and a decode task do not fit in the
    cluster's CPUs, the actors get a smaller share (logged as a warning, one line); what cannot fit at all (GPUs,
    too many actors) raises a SettingsError naming the flag to change. ``address`` with a token Ray will not send
    (token authentication without ``RAY_AUTH_MODE=token``) raises a one-line RayRunError.

    The run's model identity, and so its fingerprint, is computed once on the driver (from the names, else by
    loading the models once in a Ray task); every actor checks it loaded the same. Inputs already done are dropped
    inside the Ray tasks (by content hash, computed where the bytes are read), so ``skipped`` is only known when the
    run ends. Records come in completion order.

    Raises:
        RayMissingError: Ray Data is not installed.
        SettingsError: an argument out of range, or actors that cannot fit in the cluster.
        RayRunError: the cluster could not be joined for want of ``RAY_AUTH_MODE=token``.
        Image2PromptError: a problem every image would hit (models, vocabulary, cache),
            raised after the records written so far were flushed.
    """
    for name, size in (("encode_actors", encode_actors), ("search_actors", search_actors), ("batch_size", batch_size)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise SettingsError(f"{name} must be a positive integer, got {size!r}")
    for name, value in (("num_gpus_per_actor", num_gpus_per_actor), ("num_cpus_per_actor", num_cpus_per_actor),
                        ("num_gpus_per_search_actor", num_gpus_per_search_actor)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
            raise SettingsError(f"{name} must be a number >= 0, got {value!r}")
    if not isinstance(settings, SearchSettings):
        raise TypeError(f"settings must be a SearchSettings, got {type(settings).__name__}")
    if num_gpus_per_actor == 0 and str(config.device).lower().startswith("cuda"):
        raise SettingsError(f"device {config.device!r} needs GPUs on the encode actors: "
                            "give each some (num_gpus_per_actor, e.g. 1 or 0.5)")
    scores_top = int(store_scores) if store_scores is not None else None  # not a search setting (as BatchJob)
    ray = _import_ray()
    summary = RunSummary()
    joined = _init_ray(ray, address)
    context = ray.data.DataContext.get_current()
    saved = _configure(context)
    writer: RecordWriter | None = None
    sink: RecordSink | None = None
    try:
        fit = _fit_cluster(ray, encode_actors=encode_actors, search_actors=search_actors,
                           num_cpus_per_actor=num_cpus_per_actor, num_gpus_per_actor=num_gpus_per_actor,
                           num_gpus_per_search_actor=num_gpus_per_search_actor)
        num_cpus_per_actor = fit.actor_cpus
        identity = run_identity(ray, config, num_cpus_per_actor)
        fp = summary.fingerprint = identity.fingerprint(settings)
        failed_before: list[dict[str, Any]] = []  # the error records a retry dropped
        reached: set[str] = set()  # the sources (and manifest rows) the inputs gave
        writer = open_output(output, fmt)
        sink = RecordSink(writer, fp, summary, sidecar=sidecar, on_error=on_error, progress=progress,
                          on_record=on_record)
        if retry_failed:
            check_retry(writer, fp, output)
            dropped = writer.drop_errors(fp, keep=failed_before)
            if dropped:
                log.info("retrying %d failed input%s", dropped, "" if dropped == 1 else "s")
        tables, summary.seen = input_rows(inputs, allow_urls=allow_urls, column=column, caption_column=caption_column,
                                          reached=reached)
        done = DoneSet.build(os.fspath(output), fmt, writer.done_keys(), fp) if writer.done_keys() else None
        if done is not None:
            log.info("resuming %s: %d records under fingerprint %s", output, done.size, fp)
        if tables:
            ds = _pipeline(ray, tables, done=done, config=config, settings=settings, identity=identity,
                           caption=caption, encode_actors=encode_actors, search_actors=search_actors,
                           num_gpus_per_actor=num_gpus_per_actor, num_cpus_per_actor=num_cpus_per_actor,
                           num_gpus_per_search_actor=num_gpus_per_search_actor, batch_size=batch_size,
                           decode_cpus=fit.decode_cpus, max_pixels=max_pixels, scores_top=scores_top,
                           store_features=None if store_features is None else os.fspath(store_features))
            with _mapped_errors(ray):
                _drain(ds, sink)
        summary.finished = True
    finally:
        try:
            if writer is not None:
                if failed_before and sink is not None:  # still failing, with their own errors
                    sink.keep_unreached(failed_before, reached if summary.finished else None)
                if summary.finished:
                    writer.close()
                else:
                    writer.abort()
                outputs = run_outputs(sidecar, store_features, scores_top)
                write_failure_manifest(writer, output, summary.fingerprint,
                                       describe_run(config, settings, caption, summary.fingerprint, outputs,
                                                    caption_column))
        finally:
            _restore(context, saved)
            if joined:
                ray.shutdown()
            summary.seconds = time.monotonic() - summary.started
    summary.skipped = max(0, summary.seen - summary.written)
    if progress is not None:
        progress(summary)
    log.info("ray batch done: %s", summary.summary())
    return summary


def _drain(ds: Any, sink: RecordSink) -> None:
    """Hand the pipeline's rows to the sink as they come (the driver's side). A row whose content the output already
    holds (a copy row from the resume filter, or an image seen earlier in this run) gets the stored record under its
    name, as in the engine."""
    for row in ds.iter_rows():
        path = row.get("path")
        entry = Entry(str(row.get("source")), Path(str(path)) if path else None, row.get("content_hash"))
        if sink.known(entry):
            continue
        text = row.get("record")
        if row.get("kind") == KIND_COPY or not text:
            log.warning("%s: skipped (its record could not be read back)", entry.source)
        else:
            sink.put(entry, json.loads(text))
        sink.tick()


@contextmanager
def _mapped_errors(ray: Any) -> Iterator[None]:
    """Raise what :func:`~.cluster._driver_error` makes of an error out of Ray (the Ray exception as its cause)."""
    try:
        yield
    except Exception as err:
        mapped = _driver_error(ray, err)
        if mapped is err:
            raise
        raise mapped from err


def run_identity(ray: Any, config: Config, num_cpus: float) -> ModelIdentity:
    """The run's model identity, once, before any actor loads a model: told from the names where the driver can (it
    sees the model folders and vocabulary), else the models are loaded once in a Ray task, as a worker sees them.
    Every actor checks that it loaded this identity."""
    try:
        predicted = ModelIdentity.of_config(config)
    except Exception as err:  # noqa: BLE001  e.g. a model folder only the workers can see
        log.debug("cannot tell the model identity on the driver (%s)", reason(err))
        predicted = None
    if predicted is not None:
        return predicted
    task = ray.remote(_identity_task).options(num_cpus=num_cpus, num_gpus=0, max_retries=MAX_TASK_RETRIES)
    log.info("loading the models once in a Ray task for the run's model identity")
    with _mapped_errors(ray):  # a model problem: its own one line
        return cast(ModelIdentity, ray.get(task.remote(config)))


def _identity_task(config: Config) -> ModelIdentity:
    from ...interrogator import Interrogator

    # Device and precision are not part of the identity: load on the CPU.
    return Interrogator.load(replace(config, device="cpu", precision="auto", caption_precision=None,
                                     low_vram=False)).identity


def _pipeline(ray: Any, tables: list[Any], *, done: DoneSet | None, config: Config, settings: SearchSettings,
              identity: ModelIdentity, encode_actors: int, search_actors: int, num_gpus_per_actor: float,
              num_cpus_per_actor: float, num_gpus_per_search_actor: float, batch_size: int, max_pixels: int | None,
              scores_top: int | None, caption: str | None, store_features: str | None,
              decode_cpus: float = DECODE_CPUS) -> Any:
    """The dataset of output rows (lazy: it runs as the driver iterates it)."""
    data = ray.data
    actor = {"batch_size": batch_size, "batch_format": "numpy", "num_cpus": num_cpus_per_actor,
             **_fault_args(ray, max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES)}
    done_arg = ray.put(done) if done is not None else None
    ds = _map_batches(data.from_arrow(tables), decode_batch, batch_size=batch_size, batch_format="numpy",
                      fn_kwargs={"done": done_arg, "max_pixels": max_pixels}, num_cpus=decode_cpus,
                      **_fault_args(ray, max_retries=MAX_TASK_RETRIES))
    encoder = {"config": config, "settings": settings, "caption": caption, "identity": identity}
    searcher = {"config": config, "settings": settings, "identity": identity, "on_gpu": num_gpus_per_search_actor > 0,
                "scores_top": scores_top, "store_features": store_features}
    ds = _map_batches(ds, Encoder, fn_constructor_kwargs=encoder, compute=data.ActorPoolStrategy(size=encode_actors),
                      num_gpus=num_gpus_per_actor, **actor)
    return _map_batches(ds, Searcher, fn_constructor_kwargs=searcher, compute=data.ActorPoolStrategy(size=search_actors),
                        num_gpus=num_gpus_per_search_actor, **actor)
