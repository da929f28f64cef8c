"""``image2prompt batch --ray``: the batch job on Ray Data, over one machine or a cluster.

:func:`run_on_ray` runs what the single-process batch engine runs (same inputs, same
records, same output file, same resume) as a Ray Data pipeline of four stages::

    driver: iter_inputs -> input rows (source, path or pickled read(), error)   [no bytes read]
      |  from_arrow: blocks of rows
      v
    read + sha256 + resume filter + decode     plain function, CPU tasks (map_batches)
      |  rows: kind (image/error/copy), source, path, content_hash, error, image (HWC uint8)
      v
    encode                                     actor pool (an Interrogator per actor), GPUs
      |  rows: ..., caption, caption_model, fingerprint, captioner, vec_0..vec_E (float32)
      v
    search                                     second actor pool, CPUs (or GPUs on request)
      |  rows: kind, source, path, content_hash, record (make_record(...) as JSON)
      v
    driver: iter_rows -> open_output(output).write(record), caption files, FILE.failed.txt

Images are read, hashed and decoded in Ray tasks, never on the driver (except the
members of WebDataset shards, whose bytes :func:`~image2prompt.batch.inputs.iter_inputs`
reads as it streams the tar). Bad inputs travel through the stages as error rows and
become error records; a batch that fails in a model is retried image by image, like
:class:`~image2prompt.runner.Runner` does. Records are written on the driver through
:func:`~image2prompt.batch.records.open_output`, so the file formats, the torn-tail
repair and the resume keys are the single-process path's. See ``docs/scale.md``.

Ray is imported only inside this module's functions (the optional ``ray`` extra).
The library never prints: this module only logs.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import Image2PromptError, ImageLoadError, SettingsError, one_line
from ..io import DEFAULT_MAX_PIXELS, ImageSource, load_image
from ..runner import _is_fatal, _reason
from ..settings import SearchSettings
from .engine import BatchStats, record_prompt, store_features, write_failure_manifest
from .identity import predict_fingerprint
from .inputs import iter_inputs
from .records import RecordWriter, copy_record, json_default, make_record, open_output, read_records
from .retry import describe_run, run_outputs
from .sidecars import SidecarOptions, write_sidecar

if TYPE_CHECKING:  # pragma: no cover
    from ..features import Features
    from ..interrogator import Config, Interrogator
    from ..results import Result

__all__ = ["RAY_MISSING", "RayMissingError", "RayRunError", "RunSummary", "run_on_ray"]

log = logging.getLogger(__name__)

#: What a run without Ray installed says (one line, for the CLI to print).
RAY_MISSING = "--ray needs Ray Data: pip install 'image2prompt[ray]'"

# Fault tolerance (see docs/scale.md, "Failures").
#
# An actor whose process or node dies (a lost node, a preempted spot instance, host OOM)
# is recreated, as often as it takes: -1.
ACTOR_MAX_RESTARTS = -1
# The batch it was running is sent again at most this many times (to a new actor), and a
# decode task whose worker died is retried as often; then the run fails. Ray Data's
# default is to retry for ever, which turns one image that kills its worker every time
# (a decoder crash, an image that exhausts memory) into a run that never ends.
MAX_TASK_RETRIES = 2
# A block whose function raised fails the run (Ray Data's default, set on purpose): every
# per-image problem is already an error row, so an exception that escapes a stage is a
# problem with the models, the vocabulary, the cache or a node, which every other block
# would hit too. Dropping blocks would lose their images silently; failing keeps what was
# written (it is flushed record by record), and a rerun resumes.
MAX_ERRORED_BLOCKS = 0
# Exceptions raised inside actor tasks are not retried (actor deaths are, see above): a
# model error repeats on retry, and the stages already retry a failed batch image by image.
ACTOR_TASK_RETRY_ON_ERRORS = False

# Resources (see docs/scale.md, "Sizing the actors"). The decode tasks ask for DECODE_CPUS
# each; the actors hold their CPUs for the whole run, so actors plus one decode task must
# fit in the cluster's CPUs, or the decode tasks wait for ever for a CPU that never frees.
# Actors that do not fit are given a smaller share (fractions only count for scheduling:
# every process still uses the cores it wants), down to MIN_ACTOR_CPUS each.
DECODE_CPUS = 1.0
MIN_ACTOR_CPUS = 0.1

# Input rows per block: blocks are the unit of parallelism of the decode tasks.
_MAX_BLOCK_ROWS = 1024
_BLOCKS_PER_CPU = 4
# One pixel stands in for the image of rows that have none (errors, copies).
_NO_IMAGE = np.zeros((1, 1, 3), np.uint8)

_KIND_IMAGE, _KIND_ERROR, _KIND_COPY = "image", "error", "copy"


class RayMissingError(Image2PromptError):
    """Ray Data is not installed (``pip install 'image2prompt[ray]'``)."""


class RayRunError(Image2PromptError):
    """The Ray run stopped for a reason that is not image2prompt's own (an actor or node lost
    more often than allowed, a Ray error); the Ray exception is its ``__cause__``."""


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

    The options mean what they mean to :class:`~image2prompt.batch.engine.BatchJob`:
    ``inputs``, ``allow_urls`` and ``column`` are what :func:`~image2prompt.batch.inputs.iter_inputs`
    takes; ``output`` and ``fmt`` what :func:`~image2prompt.batch.records.open_output` takes;
    ``caption`` is used for every input instead of generated captions; ``store_scores=K``
    keeps each computed image's top K phrases per category (``result.trace.top``, scored by
    the search actors from its features after the search, as BatchJob scores them: the
    search and the fingerprint are those of the run without it); ``store_features`` is a
    folder for each image's features (written by the search actors: every node must see
    it); ``sidecar`` writes a caption file beside each local image (on the driver);
    ``retry_failed`` drops this fingerprint's error records first and retries them.
    ``FILE.failed.txt`` lists the failed sources at the end, with ``FILE.failed.json`` (the
    run's settings, models and output options, what ``--retry-failed`` retries with) beside
    it, as the single-process path writes them.

    Ray: ``address`` is a cluster (``HEAD:6379``, ``auto``, ``ray://...``); None starts a
    local instance (an instance this process already joined is used as it is).
    ``encode_actors`` actors load the models with ``num_gpus_per_actor`` GPUs each
    (fractions share a GPU) and encode ``batch_size`` images at a time; ``search_actors``
    actors search on CPUs (or on ``num_gpus_per_search_actor`` GPUs each). Every actor
    reserves ``num_cpus_per_actor`` CPUs, and each decode task 1: where the actors and a
    decode task do not fit in the cluster's CPUs, the actors get a smaller share (logged as
    a warning, one line); what cannot fit at all (GPUs, too many actors) raises a
    SettingsError naming the flag to change. ``address`` with a token Ray will not send
    (token authentication without ``RAY_AUTH_MODE=token``) raises a one-line RayRunError.

    Callbacks, on the driver, as BatchJob's: ``progress`` with the summary after each record
    (and once at the end), ``on_error`` with each error line written (else it is logged),
    ``on_record`` with each record written.

    Inputs that already have a record under this run's fingerprint are skipped before the
    model stages (by content hash, computed where the bytes are read), so ``skipped`` is
    only known when the run ends. Records come in completion order.

    Raises:
        RayMissingError: Ray Data is not installed.
        SettingsError: an argument out of range, or actors that cannot fit in the cluster.
        RayRunError: the cluster could not be joined for want of ``RAY_AUTH_MODE=token``.
        Image2PromptError: a problem every image would hit (models, vocabulary, cache),
            raised after the records written so far were flushed.
    """
    _check_sizes(encode_actors=encode_actors, search_actors=search_actors, batch_size=batch_size)
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
    try:
        fit = _fit_cluster(ray, encode_actors=encode_actors, search_actors=search_actors,
                           num_cpus_per_actor=num_cpus_per_actor, num_gpus_per_actor=num_gpus_per_actor,
                           num_gpus_per_search_actor=num_gpus_per_search_actor)
        num_cpus_per_actor = fit.actor_cpus
        writer = open_output(output, fmt)
        if retry_failed or writer.done_keys():
            summary.fingerprint = _resume_fingerprint(ray, config, settings, num_cpus_per_actor)
        if retry_failed and summary.fingerprint is not None:
            dropped = writer.drop_errors(summary.fingerprint)
            if dropped:
                log.info("retrying %d failed input%s", dropped, "" if dropped == 1 else "s")
        resume_fp = summary.fingerprint if writer.done_keys() else None
        tables, summary.seen = _input_rows(inputs, allow_urls=allow_urls, column=column)
        done = _DoneSet.build(os.fspath(output), fmt, writer.done_keys(), resume_fp) if resume_fp is not None else None
        if done is not None:
            log.info("resuming %s: %d records under fingerprint %s", output, done.size, resume_fp)
        if tables:
            ds = _pipeline(ray, tables, done=done, config=config, settings=settings, caption=caption,
                           encode_actors=encode_actors, search_actors=search_actors,
                           num_gpus_per_actor=num_gpus_per_actor, num_cpus_per_actor=num_cpus_per_actor,
                           num_gpus_per_search_actor=num_gpus_per_search_actor, batch_size=batch_size,
                           decode_cpus=fit.decode_cpus, max_pixels=max_pixels, scores_top=scores_top,
                           store_features=None if store_features is None else os.fspath(store_features))
            try:
                _drain(ds, writer, summary, resume_fp, sidecar, progress, on_error, on_record)
            except Exception as err:
                mapped = _driver_error(ray, err)
                if mapped is err:
                    raise
                raise mapped from err
        summary.finished = True
        writer.close()
    finally:
        try:
            if writer is not None:
                if not summary.finished:
                    writer.abort()
                outputs = run_outputs(sidecar, store_features, scores_top)
                write_failure_manifest(writer, output, summary.fingerprint,
                                       describe_run(config, settings, caption, summary.fingerprint, outputs))
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


def _drain(ds: Any, writer: RecordWriter, summary: RunSummary, resume_fp: str | None,
           sidecar: SidecarOptions | None, progress: Callable[[RunSummary], None] | None,
           on_error: Callable[[str], None] | None, on_record: Callable[[dict[str, Any]], None] | None) -> None:
    """Write the pipeline's records as they come (the driver's side)."""
    warned: set[str] = set()
    no_sidecar_said = False
    for row in ds.iter_rows():
        record = _record_of(row, writer, resume_fp)
        if record is None:
            continue
        fp = record.get("fingerprint")
        if resume_fp is not None and fp is not None and fp != resume_fp and fp not in warned:
            warned.add(fp)
            log.warning("the actors' fingerprint %s is not the one the resume used (%s): "
                        "do all nodes see the same models and vocabulary?", fp, resume_fp)
        summary.fingerprint = fp or summary.fingerprint
        writer.write(record)
        if not record.get("ok"):
            summary.failed += 1
            if on_error is not None:
                on_error(str(record.get("error")))
            else:
                log.info("%s", record.get("error"))
        elif row.get("kind") == _KIND_COPY:
            summary.copied += 1
        else:
            summary.done += 1
        if sidecar is not None and record.get("ok"):
            path = row.get("path")
            if path is None:
                if not no_sidecar_said:
                    no_sidecar_said = True
                    log.warning("no caption files for inputs that are not local files (URLs, tar members), "
                                "such as %s", record.get("source"))
            else:
                prompt = record_prompt(record)
                if prompt is not None:
                    try:
                        outcome = write_sidecar(str(path), prompt, sidecar)
                    except OSError as err:
                        outcome = "failed"
                        log.warning("%s: cannot write its caption file (%s)", record.get("source"),
                                    err.strerror or err)
                    summary.sidecars[outcome] = summary.sidecars.get(outcome, 0) + 1
        if on_record is not None:
            on_record(record)
        if progress is not None:
            progress(summary)


# --- set-up --------------------------------------------------------------------------


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SettingsError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class _Fit:
    """What the stages ask Ray for: CPUs per actor and per decode task, and the line that
    says it when the asked-for CPUs were cut to fit the cluster (else None)."""

    actor_cpus: float
    decode_cpus: float = DECODE_CPUS
    note: str | None = None


def _fit(total: Mapping[str, float], largest: Mapping[str, float], *, encode_actors: int, search_actors: int,
         num_cpus_per_actor: float, num_gpus_per_actor: float, num_gpus_per_search_actor: float) -> _Fit:
    """Fit the actor pools and the decode tasks in the cluster's resources.

    ``total`` is the cluster's resources (``ray.cluster_resources()``), ``largest`` the
    largest node's. Every actor holds its CPUs and GPUs for the whole run and the decode
    tasks need a CPU beside them, so what does not fit never runs: the run would wait for
    ever. CPUs are shared out instead (smaller fractions for the actors, down to
    ``MIN_ACTOR_CPUS``; the decode tasks down to half the cluster); GPUs are not, since
    Ray does not divide GPU memory. What cannot fit is a SettingsError naming the flag.
    """
    eps = 1e-9
    cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    node_cpus, node_gpus = float(largest.get("CPU", cpus)), float(largest.get("GPU", gpus))
    gpu_need = encode_actors * num_gpus_per_actor + search_actors * num_gpus_per_search_actor
    if gpu_need > gpus + eps:
        parts, flags = [], []
        if num_gpus_per_actor:
            parts.append(f"{encode_actors} encode actor{'s' * (encode_actors > 1)} at {num_gpus_per_actor:g} GPU")
            flags.append("--encode-actors or --gpus-per-actor")
        if num_gpus_per_search_actor:
            parts.append(f"{search_actors} search actor{'s' * (search_actors > 1)} at "
                         f"{num_gpus_per_search_actor:g} GPU")
            flags.append("--search-actors or num_gpus_per_search_actor")
        raise SettingsError(f"--ray: {' and '.join(parts)} need {gpu_need:g} GPU{'s' * (gpu_need != 1)}, the Ray "
                            f"cluster has {gpus:g}: lower {', or '.join(flags)}")
    for asked, name, flag in ((num_gpus_per_actor, "an encode actor", "--gpus-per-actor"),
                              (num_gpus_per_search_actor, "a search actor", "num_gpus_per_search_actor")):
        if asked > node_gpus + eps:
            raise SettingsError(f"--ray: {name} asks for {asked:g} GPUs, the largest node of the Ray cluster has "
                                f"{node_gpus:g}: lower {flag}")
    if cpus <= 0:
        raise SettingsError("--ray: the Ray cluster has no CPUs for the decode tasks and the actors: add nodes "
                            "with CPUs")
    actors = encode_actors + search_actors
    need = actors * num_cpus_per_actor + DECODE_CPUS
    if need <= cpus + eps and num_cpus_per_actor <= node_cpus + eps:
        return _Fit(num_cpus_per_actor)
    decode = min(DECODE_CPUS, cpus / 2)
    share = min(num_cpus_per_actor, (cpus - decode) / actors, node_cpus)
    share = math.floor(share * 100 + eps) / 100  # Ray takes fractions in steps of 1e-4
    said = (f"{encode_actors} encode and {search_actors} search actor{'s' * (search_actors > 1)} at "
            f"{num_cpus_per_actor:g} CPU{'s' * (num_cpus_per_actor > 1)} each, plus {DECODE_CPUS:g} for the decode tasks")
    if share < MIN_ACTOR_CPUS:
        least = actors * MIN_ACTOR_CPUS + decode
        raise SettingsError(f"--ray: {said}, cannot fit in the Ray cluster's {cpus:g} CPUs (even at "
                            f"{MIN_ACTOR_CPUS:g} CPU each they need {least:g}): lower --search-actors or "
                            "--encode-actors")
    note = (f"--ray: {said}, need {need:g} CPUs, the Ray cluster has {cpus:g}"
            + (f" (at most {node_cpus:g} on a node)" if num_cpus_per_actor > node_cpus + eps else "")
            + f": running each actor at {share:g} CPU (--cpus-per-actor {share:g})"
            + (f" and the decode tasks at {decode:g}" if decode != DECODE_CPUS else ""))
    return _Fit(share, decode, note)


def _fit_cluster(ray: Any, **asked: Any) -> _Fit:
    """:func:`_fit` for the cluster this process joined."""
    total = ray.cluster_resources()
    try:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        largest = {k: max(float(n.get(k, 0)) for n in nodes) for k in ("CPU", "GPU")} if nodes else total
    except Exception:  # noqa: BLE001  only a refinement: the totals decide
        largest = total
    fit = _fit(total, largest, **asked)
    if fit.note is not None:
        log.warning("%s", fit.note)
    return fit


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise RayMissingError(RAY_MISSING) from None
    return ray


def _init_ray(ray: Any, address: str | None) -> bool:
    """Join (or start) Ray; True when this call did, so the run leaves it afterwards."""
    if ray.is_initialized():
        log.debug("using the Ray instance this process already joined")
        return False
    # configure_logging=False: Ray leaves the host's logging alone; log_to_driver=False:
    # worker output stays in Ray's log files instead of being printed here.
    options: dict[str, Any] = {"address": address, "ignore_reinit_error": True, "configure_logging": False,
                               "log_to_driver": False}
    token = None
    if address is None:
        options["include_dashboard"] = False
        log.info("starting a local Ray instance")
    else:
        log.info("joining the Ray cluster at %s", address)
        token = _unsent_token(address, os.environ, Path.home())
        if token is not None and _refused_for_token(address):
            raise RayRunError(_token_auth_message(address, token))
    try:
        ray.init(**options)
    except ConnectionError as err:
        # refused for want of a token, after Ray's 20 s of retries: no token here, or the probe
        # could not tell (an address it does not parse, a Ray without its client)
        if _refused_for_auth(err):
            raise RayRunError(_token_auth_message(str(address), token)) from err
        raise
    except getattr(ray.exceptions, "AuthenticationError", ()) as err:  # RAY_AUTH_MODE=token, no token
        raise RayRunError(one_line(f"cannot join the Ray cluster at {address}: {err}", 400)) from err
    return True


# Ray's token authentication (Ray >= 2.52; see docs/scale.md, "Token authentication").
_AUTH_MODE, _AUTH_TOKEN, _AUTH_TOKEN_PATH = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"


def _unsent_token(address: str, environ: Mapping[str, str], home: Path) -> str | None:
    """Where the token is that Ray will *not* send to ``address``, or None.

    A cluster started with ``ray start`` while a token exists (``~/.ray/auth_token``, which
    every local ``ray.init()`` of Ray 2.60 writes) has token authentication on. A driver
    sends its token to an explicit address only when ``RAY_AUTH_MODE=token`` is set (Ray
    enables it by itself only for ``auto`` or a local cluster), so a driver with the token
    but without the variable is refused: Ray retries for 20 s, then says it failed to
    connect. This is that situation: an explicit address, ``RAY_AUTH_MODE`` unset, a token
    present (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``).
    """
    if address == "auto" or environ.get(_AUTH_MODE) is not None:
        return None
    if environ.get(_AUTH_TOKEN):
        return _AUTH_TOKEN
    named = environ.get(_AUTH_TOKEN_PATH)
    for path in ([Path(named).expanduser()] if named else []) + [home / ".ray" / "auth_token"]:
        if path.is_file():
            return str(path)
    return None


def _token_auth_message(address: str, token: str | None) -> str:
    if token is None:
        return (f"cannot join the Ray cluster at {address}: it uses token authentication, and this process "
                "sent no token: run with RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token "
                "(or RAY_AUTH_TOKEN)")
    return (f"cannot join the Ray cluster at {address}: it uses token authentication, and Ray sends this "
            f"machine's token ({token}) to an explicit address only when RAY_AUTH_MODE=token is set: run with "
            "RAY_AUTH_MODE=token (the token must be the cluster's)")


def _refused_for_auth(err: BaseException) -> bool:
    """Whether ray.init's "Failed to connect" was the cluster refusing a missing or wrong
    token (Ray keeps the GCS client's last error, as text, in the exception it chains)."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _refused_for_token(address: str) -> bool:
    """Ask the cluster's GCS once, without a token (as ray.init would): True when it refuses
    for want of one. Any other outcome (no answer, an address Ray Client serves, a Ray
    without this client) is False, and ray.init has its say. Milliseconds when refused,
    where ray.init retries for 20 s."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return False
    try:
        # private: Ray 2.60's standalone GCS client
        from ray._raylet import InnerGcsClient  # type: ignore[attr-defined]
        from ray.exceptions import AuthenticationError
    except ImportError:
        return False
    try:
        InnerGcsClient.standalone(address, None, 3000)
    except AuthenticationError:
        return True
    except Exception as err:  # noqa: BLE001  not ours to judge: ray.init reports it
        log.debug("probing %s: %s", address, _reason(err))
    return False


_CONTEXT = {"max_errored_blocks": MAX_ERRORED_BLOCKS, "actor_task_retry_on_errors": ACTOR_TASK_RETRY_ON_ERRORS,
            # a stage's own error reaches the driver as itself (not a UserCodeException), so
            # the front end can show its one line (see _driver_error)
            "raise_original_map_exception": True,
            # the library never prints: no progress bars, no plan banner (on_record gives progress)
            "enable_progress_bars": False, "print_on_execution_start": False}


def _driver_error(ray: Any, err: BaseException) -> BaseException:
    """What to raise on the driver for an error out of the pipeline: the image2prompt error a
    stage raised (a model, vocabulary or cache problem: one line), else a one-line RayRunError
    naming the innermost error (the Ray exception stays its ``__cause__``)."""
    seen: set[int] = set()
    e: BaseException | None = err
    inner = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, Image2PromptError) and not isinstance(e, ray.exceptions.RayError):
            # Ray Data adds lines about its retries to the message; ours is one line
            if e.args and isinstance(e.args[0], str) and "\n" in e.args[0]:
                e.args = (e.args[0].splitlines()[0], *e.args[1:])
            return e
        inner = e
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    first = next((line for line in str(inner).splitlines() if line.strip()), "")
    return RayRunError(one_line(f"the Ray run stopped: {type(inner).__name__}" + (f": {first}" if first else ""),
                                240))


def _configure(context: Any) -> dict[str, Any]:
    saved = {k: getattr(context, k) for k in _CONTEXT if hasattr(context, k)}
    for k, v in _CONTEXT.items():
        if hasattr(context, k):
            setattr(context, k, v)
    return saved


def _restore(context: Any, saved: dict[str, Any]) -> None:
    for k, v in saved.items():
        setattr(context, k, v)


def _fault_args(ray: Any, **wanted: Any) -> dict[str, Any]:
    """Ray options (``max_restarts``, ``max_task_retries``, ``max_retries``) for ``map_batches``.

    Ray 2.60 takes them only as extra keyword arguments (deprecated, to be removed in
    2.64); a Ray that takes them neither way runs with its defaults (logged).
    """
    params = inspect.signature(ray.data.Dataset.map_batches).parameters
    named = {k: v for k, v in wanted.items() if k in params}
    if len(named) == len(wanted) or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(wanted)
    log.info("this Ray's map_batches does not take %s; using its defaults", ", ".join(sorted(set(wanted) - set(named))))
    return named


def _map_batches(ray: Any, ds: Any, fn: Any, **kwargs: Any) -> Any:
    """``ds.map_batches`` with the fault options passed as Ray 2.60 still takes them (without its warning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*ray_remote_args.*deprecated", category=Warning)
        return ds.map_batches(fn, **kwargs)


def _resume_fingerprint(ray: Any, config: Config, settings: SearchSettings, num_cpus: float) -> str:
    """The fingerprint to resume under, before any actor loads a model.

    Predicted from the names (:func:`~image2prompt.batch.identity.predict_fingerprint`)
    where the driver can (it sees the model folders and vocabulary); else the models are
    loaded once in a Ray task, as a worker sees them. A wrong prediction only costs work:
    records are written under the actors' own fingerprint.
    """
    try:
        predicted = predict_fingerprint(config, settings)
    except Exception as err:  # noqa: BLE001  e.g. a model folder only the workers can see
        log.debug("cannot predict the fingerprint on the driver (%s)", _reason(err))
        predicted = None
    if predicted is not None:
        return predicted
    task = ray.remote(_fingerprint_task).options(num_cpus=num_cpus, num_gpus=0, max_retries=MAX_TASK_RETRIES)
    log.info("loading the models once in a Ray task for the resume fingerprint")
    return str(ray.get(task.remote(config, settings)))


def _fingerprint_task(config: Config, settings: SearchSettings) -> str:
    from ..interrogator import Interrogator

    # Device and precision are not part of the fingerprint: load on the CPU.
    ic = Interrogator.load(replace(config, device="cpu", precision="auto", caption_precision=None, low_vram=False))
    return ic.fingerprint(settings)


# --- input rows (driver) -----------------------------------------------------------------


def _input_rows(inputs: Sequence[str], *, allow_urls: bool, column: str | None) -> tuple[list[Any], int]:
    """Arrow tables of input rows (no image bytes read, except shard members) and their count.

    ``path`` is the local image file (read there in the task, and where a caption file
    goes); ``reader`` the pickled ``read`` function of any other item (a URL, a shard member).
    """
    import pyarrow as pa
    from ray import cloudpickle

    by_path = _path_reader() is not None
    columns: dict[str, list[Any]] = {"source": [], "path": [], "reader": [], "error": []}
    for item in iter_inputs(inputs, allow_urls=allow_urls, column=column):
        columns["source"].append(item.source)
        columns["path"].append(str(item.path) if item.path is not None else None)
        if item.error is not None:
            columns["error"].append(one_line(item.error))
            columns["reader"].append(None)
        else:
            columns["error"].append(None)
            columns["reader"].append(None if by_path and item.path is not None else cloudpickle.dumps(item.read))
    n = len(columns["source"])
    if not n:
        return [], 0
    types = {"source": pa.string(), "path": pa.string(), "reader": pa.binary(), "error": pa.string()}
    table = pa.table({k: pa.array(v, types[k]) for k, v in columns.items()})
    cpus = 1
    try:
        import ray

        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    except Exception:  # noqa: BLE001  only a sizing hint
        pass
    rows = max(1, min(_MAX_BLOCK_ROWS, math.ceil(n / (cpus * _BLOCKS_PER_CPU))))
    return [table.slice(start, rows) for start in range(0, n, rows)], n


def _path_reader() -> Callable[[Path, str], bytes] | None:
    """How ``iter_inputs`` reads a local file (its limits and messages), or None when it is not
    exposed (then a local file's ``read`` function travels pickled, like the others')."""
    from . import inputs

    found = getattr(inputs, "read_file", None) or getattr(inputs, "_read_file", None)
    return found if callable(found) else None


# --- resume ------------------------------------------------------------------------------


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest().encode("ascii")


class _DoneSet:
    """What the output holds under this run's fingerprint, as sorted 128-bit digests.

    ``keys``: record keys (content hash, or source for records without one); ``sources``:
    the sources with a record. Digest arrays are plain numpy (zero-copy from Ray's object
    store in every task), about 32 bytes a record.
    """

    def __init__(self, keys: np.ndarray, sources: np.ndarray) -> None:
        self.keys, self.sources = keys, sources

    @property
    def size(self) -> int:
        return int(self.keys.size)

    @classmethod
    def build(cls, output: str, fmt: str | None, done_keys: set[tuple[str, str]], fingerprint: str) -> _DoneSet:
        keys = sorted({_digest(k) for k, fp in done_keys if fp == fingerprint})
        sources = sorted({_digest(str(r.get("source") or "")) for r in read_records(output, fmt)
                          if r.get("fingerprint") == fingerprint})
        return cls(np.array(keys, dtype="S32"), np.array(sources, dtype="S32"))

    @staticmethod
    def _has(table: np.ndarray, key: str) -> bool:
        if table.size == 0:
            return False
        d = _digest(key)
        at = int(np.searchsorted(table, d))
        return at < table.size and table[at] == d

    def has_key(self, key: str) -> bool:
        return self._has(self.keys, key)

    def has_source(self, source: str) -> bool:
        return self._has(self.sources, source)


# --- stage 1: read, hash, resume filter, decode (CPU tasks) ------------------------------


def content_hash(data: bytes) -> str:
    """The record's ``content_hash``: sha256 hex of the input's bytes."""
    return hashlib.sha256(data).hexdigest()


def _decode_batch(batch: dict[str, np.ndarray], *, done: Any = None,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Input rows -> image, error or copy rows; rows already done are dropped."""
    if done is not None and not isinstance(done, _DoneSet):  # an ObjectRef: fetched once per task
        import ray

        done = ray.get(done)
    out: dict[str, list[Any]] = {k: [] for k in ("kind", "source", "path", "content_hash", "error", "image")}

    def emit(kind: str, source: str, path: Any, digest: str | None, error: str | None,
             image: np.ndarray = _NO_IMAGE) -> None:
        for k, v in (("kind", kind), ("source", source), ("path", path), ("content_hash", digest),
                     ("error", error), ("image", image)):
            out[k].append(v)

    for source, path, reader, error in zip(*(_column(batch, k) for k in ("source", "path", "reader", "error"))):
        source = str(source)
        data = None
        if error is None:
            data, error = _read(source, path, reader)
        if data is None:  # no bytes: keyed by source
            if done is None or not done.has_key(source):
                emit(_KIND_ERROR, source, path, None, error)
            continue
        digest = content_hash(data)
        if done is not None and done.has_key(digest):
            if not done.has_source(source):
                emit(_KIND_COPY, source, path, digest, None)  # same content, new name
            continue
        try:  # as the Runner decodes
            image = np.asarray(load_image(ImageSource(source, "bytes", data), max_pixels=max_pixels), np.uint8)
        except ImageLoadError as err:
            emit(_KIND_ERROR, source, path, digest, one_line(err))
            continue
        except Exception as err:
            log.debug("decoding %s failed", source, exc_info=True)
            emit(_KIND_ERROR, source, path, digest, f"{source}: could not load ({_reason(err)})")
            continue
        emit(_KIND_IMAGE, source, path, digest, None, image)
    return _rows(out)


def _read(source: str, path: Any, reader: Any) -> tuple[bytes | None, str | None]:
    """The input's bytes, or why there are none (one line), as the batch engine reads them."""
    try:
        if reader is None:
            read_path = _path_reader()
            assert read_path is not None and path is not None
            data = read_path(Path(str(path)), source)
        else:
            from ray import cloudpickle

            data = cloudpickle.loads(bytes(reader))()
    except ImageLoadError as err:
        return None, one_line(err)
    except Exception as err:
        log.debug("reading %s failed", source, exc_info=True)
        return None, f"{source}: could not read ({_reason(err)})"
    return bytes(data), None


def _column(batch: dict[str, Any], name: str) -> list[Any]:
    values = batch[name]
    return [None if _is_null(v) else v for v in (values.tolist() if hasattr(values, "tolist") else list(values))]


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _rows(columns: dict[str, list[Any]]) -> dict[str, Any]:
    """Columns for Ray: strings as object arrays (None kept), images as a list of arrays."""
    out: dict[str, Any] = {}
    for k, v in columns.items():
        if k == "image" or k.startswith("vec_"):
            out[k] = v
        else:
            arr = np.empty(len(v), dtype=object)
            arr[:] = v
            out[k] = arr
    return out


# --- stage 2: encode (actor pool) --------------------------------------------------------


class _Encoder:
    """Loads the interrogator once per actor and encodes batches of decoded images."""

    # The models are loaded with the first batch, not in __init__: a run whose inputs are all
    # done loads none, and an error loading them reaches the driver as itself (one line),
    # where Ray reports a failed actor start as a dead actor with a traceback in a string.
    def __init__(self, config: Config, settings: SearchSettings, caption: str | None) -> None:
        self.config, self.settings, self.caption = config, settings, caption
        self.ic: Interrogator | None = None

    def _load(self) -> Interrogator:
        if self.ic is None:
            from ..interrogator import Interrogator

            ic = Interrogator.load(self.config)
            self.fingerprint = ic.fingerprint(self.settings)
            self.generate = self.caption is None and ic.needs_caption(self.settings)  # as the Runner decides
            self.dims = [c.embed_dim for c in ic.clips]
            self.ic = ic
            log.info("encode actor ready: %s (fingerprint %s)", ic.clip_name, self.fingerprint)
        return self.ic

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from PIL import Image

        ic = self._load()
        kinds, sources = _column(batch, "kind"), _column(batch, "source")
        errors = _column(batch, "error")
        captions = [self.caption] * len(kinds)
        images = batch["image"]
        todo = [i for i, k in enumerate(kinds) if k == _KIND_IMAGE]
        feats: dict[int, Features] = {}
        for i, outcome in zip(todo, self._encode([Image.fromarray(np.asarray(images[i], np.uint8)) for i in todo],
                                                 [captions[i] for i in todo], [sources[i] for i in todo])):
            if isinstance(outcome, str):
                kinds[i], errors[i] = _KIND_ERROR, outcome
            else:
                feats[i] = outcome
        n = len(kinds)
        out: dict[str, Any] = _rows({
            "kind": kinds, "source": sources, "path": _column(batch, "path"),
            "content_hash": _column(batch, "content_hash"), "error": errors,
            "caption": [feats[i].caption if i in feats else captions[i] for i in range(n)],
            "caption_model": [feats[i].caption_model if i in feats else None for i in range(n)],
            "fingerprint": [self.fingerprint] * n, "captioner": [ic.caption_name] * n,
        })
        for e, dim in enumerate(self.dims):
            vec = np.zeros((n, dim), np.float32)
            for i, f in feats.items():
                vec[i] = f.vectors[e]
            out[f"vec_{e}"] = vec
        return out

    def _encode(self, images: list[Any], captions: list[Any], sources: list[str]) -> list[Features | str]:
        """Features per image, or its one-line error; a failed batch is retried image by image."""
        if not images:
            return []
        try:
            assert self.ic is not None
            return list(self.ic.encode(images, captions, sources=sources, generate_captions=self.generate))
        except Exception as err:
            if _is_fatal(err):
                raise
            if len(images) == 1:
                log.debug("encoding %s failed", sources[0], exc_info=True)
                return [_failed(sources[0], err)]
            log.info("a batch of %d images failed to encode (%s); retrying each alone", len(images), _reason(err))
            out: list[Features | str] = []
            for im, cap, src in zip(images, captions, sources):
                out.extend(self._encode([im], [cap], [src]))
            return out


def _failed(source: str, err: BaseException) -> str:
    return f"{source}: could not interrogate ({_reason(err)})"


# --- stage 3: search (actor pool) --------------------------------------------------------


class _NamedCaptioner:
    """Stands in for the encode actors' captioner in a search actor: search uses only its
    name (part of the fingerprint), so the captioner's weights are not loaded there."""

    def __init__(self, name: str) -> None:
        self.name = name

    def caption(self, images: Sequence[Any], *, batch_size: int = 16) -> list[str]:
        raise RuntimeError("search actors do not caption")


class _Searcher:
    """Holds an interrogator (text towers and tables; no captioner) and searches features."""

    def __init__(self, config: Config, settings: SearchSettings, on_gpu: bool, scores_top: int | None,
                 store_features: str | None) -> None:
        changes: dict[str, Any] = {"caption_model": None}
        if not on_gpu:
            changes.update(device="cpu", precision="auto", caption_precision=None, low_vram=False)
        self.config = replace(config, **changes)
        self.settings = settings
        self.scores_top = scores_top  # --store-scores K: scored after the search (see _add_scores)
        self.store_features = store_features
        self.ic: Interrogator | None = None  # loaded with the first batch (see _Encoder)

    def _load(self) -> Interrogator:
        if self.ic is None:
            from ..interrogator import Interrogator

            ic = Interrogator.load(self.config)
            ic.prepare()  # embed or load every table before the first search
            self.ic = ic
            log.info("search actor ready: %s", ic.clip_name)
        return self.ic

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from ..features import Features

        ic = self._load()
        kinds, sources = _column(batch, "kind"), _column(batch, "source")
        hashes, errors = _column(batch, "content_hash"), _column(batch, "error")
        captions, caption_models = _column(batch, "caption"), _column(batch, "caption_model")
        theirs = next((fp for fp in _column(batch, "fingerprint") if fp), None)
        self._adopt_captioner(next((c for c in _column(batch, "captioner") if c), None))
        fingerprint = ic.fingerprint(self.settings)
        if theirs is not None and theirs != fingerprint:
            raise Image2PromptError(
                f"the encode and search actors loaded different models or vocabularies (fingerprints {theirs} "
                f"and {fingerprint}): every node must see the same weights, vocabulary and image2prompt version")
        todo = [i for i, k in enumerate(kinds) if k == _KIND_IMAGE]
        vectors = [np.asarray(batch[f"vec_{e}"], np.float32) for e in range(len(ic.clips))]
        keys = ic.encoder_keys
        feats = [Features([v[i] for v in vectors], keys, captions[i], caption_models[i], sources[i]) for i in todo]
        results: dict[int, Result | str] = dict(zip(todo, self._search(feats, [sources[i] for i in todo])))
        if self.store_features is not None:
            for i, f in zip(todo, feats):
                if not isinstance(results.get(i), str) and hashes[i]:
                    self._save(f, hashes[i])
        if self.scores_top is not None:
            for i, f in zip(todo, feats):
                found = results.get(i)
                if found is not None and not isinstance(found, str):
                    self._add_scores(found, f)
        records: list[str | None] = []
        for i, kind in enumerate(kinds):
            if kind == _KIND_COPY:
                records.append(None)
                continue
            outcome = results.get(i, errors[i] or f"{sources[i]}: could not interrogate (no result)")
            result = outcome if not isinstance(outcome, str) else None
            error = outcome if isinstance(outcome, str) else None
            rec = make_record(sources[i], hashes[i], fingerprint, result, error, scores=self.scores_top is not None)
            records.append(json.dumps(rec, ensure_ascii=False, allow_nan=False, default=json_default))
        return _rows({"kind": kinds, "source": sources, "path": _column(batch, "path"), "content_hash": hashes,
                      "record": records})

    def _save(self, features: Features, digest: str) -> None:
        """``--store-features``: DIR/<h[:2]>/<h>.safetensors, as the batch engine stores them."""
        assert self.store_features is not None
        store_features(self.store_features, features, digest)

    def _add_scores(self, result: Result, features: Features) -> None:
        """``--store-scores K``: the top K phrases per category as ``result.trace.top``, scored from
        the features after the search, as :meth:`BatchJob._add_scores` scores them (the same
        :meth:`~image2prompt.interrogator.Interrogator.analyze_features`)."""
        from .engine import add_scores

        assert self.ic is not None and self.scores_top is not None
        add_scores(self.ic, result, features, self.scores_top)

    def _adopt_captioner(self, name: str | None) -> None:
        assert self.ic is not None
        if name and (self.ic.captioner is None or self.ic.captioner.name != name):
            self.ic.captioner = _NamedCaptioner(name)

    def _search(self, feats: list[Features], sources: list[str]) -> list[Result | str]:
        """A result or a one-line error per features; a failed batch is retried one by one."""
        out: list[Result | str | None] = [None] * len(feats)
        if not feats:
            return []
        assert self.ic is not None
        try:
            for j, result in self.ic.search_indexed(feats, self.settings):
                if 0 <= j < len(out) and out[j] is None:
                    out[j] = result
        except Exception as err:
            if _is_fatal(err):
                raise
            rest = [j for j, r in enumerate(out) if r is None]
            if len(feats) == 1:
                log.debug("searching %s failed", sources[0], exc_info=True)
                return [_failed(sources[0], err)]
            log.info("a batch of %d images failed in search (%s); retrying each of its %d remaining alone",
                     len(feats), _reason(err), len(rest))
            for j in rest:
                out[j] = self._search([feats[j]], [sources[j]])[0]
        return [r if r is not None else f"{s}: could not interrogate (no result)" for r, s in zip(out, sources)]


# --- the pipeline and the driver's side ---------------------------------------------------


def _pipeline(ray: Any, tables: list[Any], *, done: _DoneSet | None, config: Config, settings: SearchSettings,
              encode_actors: int, search_actors: int, num_gpus_per_actor: float, num_cpus_per_actor: float,
              num_gpus_per_search_actor: float, batch_size: int, max_pixels: int | None, scores_top: int | None,
              caption: str | None, store_features: str | None, decode_cpus: float = DECODE_CPUS) -> Any:
    """The dataset of output rows (lazy: it runs as the driver iterates it)."""
    data = ray.data
    actor_fault = _fault_args(ray, max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES)
    task_fault = _fault_args(ray, max_retries=MAX_TASK_RETRIES)
    done_arg = ray.put(done) if done is not None else None
    ds = data.from_arrow(tables)
    ds = _map_batches(ray, ds, _decode_batch, batch_size=batch_size, batch_format="numpy",
                      fn_kwargs={"done": done_arg, "max_pixels": max_pixels}, num_cpus=decode_cpus, **task_fault)
    ds = _map_batches(ray, ds, _Encoder, batch_size=batch_size, batch_format="numpy",
                      fn_constructor_kwargs={"config": config, "settings": settings, "caption": caption},
                      compute=data.ActorPoolStrategy(size=encode_actors),
                      num_cpus=num_cpus_per_actor, num_gpus=num_gpus_per_actor, **actor_fault)
    ds = _map_batches(ray, ds, _Searcher, batch_size=batch_size, batch_format="numpy",
                      fn_constructor_kwargs={"config": config, "settings": settings,
                                             "on_gpu": num_gpus_per_search_actor > 0, "scores_top": scores_top,
                                             "store_features": store_features},
                      compute=data.ActorPoolStrategy(size=search_actors),
                      num_cpus=num_cpus_per_actor, num_gpus=num_gpus_per_search_actor, **actor_fault)
    return ds


def _record_of(row: dict[str, Any], writer: Any, fingerprint: str | None) -> dict[str, Any] | None:
    """The record to write for one output row (a copy: the stored record, under its new source)."""
    if row.get("kind") == _KIND_COPY:
        digest, source = row.get("content_hash"), str(row.get("source"))
        found = writer.find(digest, fingerprint) if digest and fingerprint else None
        if found is None:
            log.warning("%s: its content has a record in the output, but it could not be read back; skipped",
                        source)
            return None
        record = copy_record(found, source)
        record["content_hash"] = digest
        return record
    text = row.get("record")
    return json.loads(text) if text else None

