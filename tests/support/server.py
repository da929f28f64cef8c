"""A real ``image2prompt serve`` application on a free loopback port, in a thread (for the server tests)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.support.http import PROXY_VARIABLES


@contextmanager
def running_app(app: Any, monkeypatch: pytest.MonkeyPatch | None = None, *, ready: bool = True,
                timeout: float = 120.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a port the kernel picks); yields the base URL once
    the server answers (and, with ``ready``, once /readyz says the models are ready)."""
    import uvicorn

    if monkeypatch is not None:
        for var in PROXY_VARIABLES:
            monkeypatch.delenv(var, raising=False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(base + ("/readyz" if ready else "/healthz"), timeout)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def _wait_for(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception as err:  # noqa: BLE001  not up yet (connection refused, 503 while loading)
            last = err
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s (last: {last})")
