"""Ray version shims: the Data context the run sets, and the fault options as this Ray takes them."""

from __future__ import annotations

import inspect
import logging
import warnings
from typing import Any

from .cluster import ACTOR_TASK_RETRY_ON_ERRORS, MAX_ERRORED_BLOCKS

log = logging.getLogger(__name__)

_CONTEXT = {"max_errored_blocks": MAX_ERRORED_BLOCKS, "actor_task_retry_on_errors": ACTOR_TASK_RETRY_ON_ERRORS,
            # a stage's own error reaches the driver as itself (not a UserCodeException), so
            # the front end can show its one line (see _driver_error)
            "raise_original_map_exception": True,
            # the library never prints: no progress bars, no plan banner (on_record gives progress)
            "enable_progress_bars": False, "print_on_execution_start": False}


def _configure(context: Any) -> dict[str, Any]:
    saved = {k: getattr(context, k) for k in _CONTEXT if hasattr(context, k)}
    for k in saved:
        setattr(context, k, _CONTEXT[k])
    return saved


def _restore(context: Any, saved: dict[str, Any]) -> None:
    for k, v in saved.items():
        setattr(context, k, v)


def _fault_args(ray: Any, **wanted: Any) -> dict[str, Any]:
    """Ray options (``max_restarts``, ``max_task_retries``, ``max_retries``) for ``map_batches``.

    Ray 2.60 takes them only as extra keyword arguments (deprecated, to be removed in 2.64); a Ray that takes them
    neither way runs with its defaults (logged).
    """
    params = inspect.signature(ray.data.Dataset.map_batches).parameters
    named = {k: v for k, v in wanted.items() if k in params}
    if len(named) == len(wanted) or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(wanted)
    log.info("this Ray's map_batches does not take %s; using its defaults", ", ".join(sorted(set(wanted) - set(named))))
    return named


def _map_batches(ds: Any, fn: Any, **kwargs: Any) -> Any:
    """``ds.map_batches`` with the fault options passed as Ray 2.60 still takes them (without its warning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*ray_remote_args.*deprecated", category=Warning)
        return ds.map_batches(fn, **kwargs)
