"""Joining Ray and fitting the run in it: the actor and decode-task resources, token authentication, and the errors
a Ray run raises on the driver (:mod:`image2prompt.batch.ray`)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import Image2PromptError, SettingsError, one_line
from ...work import reason as _reason

__all__ = ["RAY_MISSING", "RayMissingError", "RayRunError"]

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


class RayMissingError(Image2PromptError):
    """Ray Data is not installed (``pip install 'image2prompt[ray]'``)."""


class RayRunError(Image2PromptError):
    """The Ray run stopped for a reason that is not image2prompt's own (an actor or node lost more often than
    allowed, a Ray error); the Ray exception is its ``__cause__``."""


@dataclass(frozen=True)
class _Fit:
    """What the stages ask Ray for: CPUs per actor and per decode task, and the line that says it when the asked-for
    CPUs were cut to fit the cluster (else None)."""

    actor_cpus: float
    decode_cpus: float = DECODE_CPUS
    note: str | None = None


def _fit(total: Mapping[str, float], largest: Mapping[str, float], *, encode_actors: int, search_actors: int,
         num_cpus_per_actor: float, num_gpus_per_actor: float, num_gpus_per_search_actor: float) -> _Fit:
    """Fit the actor pools and the decode tasks in the cluster's resources (see "Resources" above).

    ``total`` is the cluster's resources (``ray.cluster_resources()``), ``largest`` the largest node's. CPUs are
    shared out (the decode tasks down to half the cluster); GPUs are not, since Ray does not divide GPU memory. What
    cannot fit is a SettingsError naming the flag.
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

    A cluster started with ``ray start`` while a token exists (``~/.ray/auth_token``, which every local
    ``ray.init()`` of Ray 2.60 writes) has token authentication on. A driver sends its token to an explicit address
    only when ``RAY_AUTH_MODE=token`` is set (Ray enables it by itself only for ``auto`` or a local cluster), so a
    driver with the token but without the variable is refused: Ray retries for 20 s, then says it failed to connect.
    This is that situation: an explicit address, ``RAY_AUTH_MODE`` unset, a token present (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``).
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
    """Whether ray.init's "Failed to connect" was the cluster refusing a missing or wrong token (Ray keeps the GCS
    client's last error, as text, in the exception it chains)."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _refused_for_token(address: str) -> bool:
    """Ask the cluster's GCS once, without a token (as ray.init would): True when it refuses for want of one. Any
    other outcome (no answer, an address Ray Client serves, a Ray without this client) is False, and ray.init has
    its say. Milliseconds when refused, where ray.init retries for 20 s."""
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


def _driver_error(ray: Any, err: BaseException) -> BaseException:
    """What to raise on the driver for an error out of the pipeline: the image2prompt error a stage raised (a model,
    vocabulary or cache problem: one line), else a one-line RayRunError naming the innermost error (the Ray
    exception stays its ``__cause__``)."""
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
