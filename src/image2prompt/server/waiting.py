"""Waiting for the shared model worker: submit to the :class:`~image2prompt.service.MicroBatcher`,
wait within the request's timeout, and turn what it raises into HTTP answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from fastapi import Request

from ..errors import Image2PromptError, ImageLoadError, SettingsError, one_line
from ..service import Busy, ShuttingDown
from .errors import HTTPError, image_error

log = logging.getLogger(__name__)

async def wait(request: Request, submit: Callable[[], Future[Any]], timeout: float) -> Any:
    """Submit to the batcher and wait; a timeout (504) or a client gone cancels the work if it
    has not started."""
    try:
        fut = submit()
    except Busy as err:
        raise HTTPError(503, str(err), {"Retry-After": str(request.app.state.i2p.config.retry_after)}) from None
    except ShuttingDown as err:
        raise HTTPError(503, str(err)) from None
    except SettingsError as err:
        raise HTTPError(422, str(err)) from None
    waiter = asyncio.wrap_future(fut)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            started = not fut.cancel()
            waiter.add_done_callback(retrieve)
            raise HTTPError(504, f"no result within {timeout:g} s" + (
                "" if started else "; the request was cancelled before it reached the model"))
        done, _ = await asyncio.wait({waiter}, timeout=min(0.25, left))
        if done:
            break
        if await request.is_disconnected():
            fut.cancel()
            waiter.add_done_callback(retrieve)
            log.info("%s %s: the client went away; its request was cancelled", request.method, request.url.path)
            raise HTTPError(499, "client closed the request")
    try:
        return waiter.result()
    except ImageLoadError as err:
        raise image_error(err) from None
    except SettingsError as err:
        raise HTTPError(422, one_line(err)) from None
    except ShuttingDown as err:
        raise HTTPError(503, str(err)) from None
    except Image2PromptError as err:  # e.g. features of other encoders: the request's fault, said in words
        if isinstance(err, ValueError):
            raise HTTPError(422, one_line(err)) from None
        raise
    except asyncio.CancelledError:
        raise HTTPError(503, "the request was cancelled") from None


def retrieve(fut: Any) -> None:
    """Read an abandoned future's outcome so asyncio does not log it as never retrieved."""
    if not fut.cancelled():
        fut.exception()


async def wait_queued(request: Request, submit: Callable[[], Future[Any]], timeout: float) -> Any:
    """:func:`wait`, but a full queue is waited out (a batch upload is one request already admitted)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await wait(request, submit, max(0.001, deadline - loop.time()))
        except HTTPError as err:
            if err.status != 503 or "queue is full" not in err.message or loop.time() >= deadline:
                raise
            await asyncio.sleep(0.05)
