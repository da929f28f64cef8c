"""The Hugging Face Hub's reachability, asked once (huggingface_hub imported lazily; every layer may use it).

Before anything is fetched from the Hub, its host is probed with one short TCP connect. When nothing answers, callers
use the local cache only and say so in one line, instead of the minute of retries huggingface_hub would spend.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request
from urllib.parse import urlsplit

#: Seconds the Hub probe waits for a TCP connect (DNS included).
PROBE_TIMEOUT_S = 3.0
#: Seconds a probe's answer is reused (several models load in a row; a server retries later).
PROBE_TTL_S = 60.0

_probe_lock = threading.Lock()
_probes: dict[str, tuple[float, bool]] = {}  # endpoint -> (monotonic time, reachable)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """Whether the user turned the Hub off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    if any(os.environ.get(k, "").strip().lower() in {"1", "true", "yes", "on"}
           for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _probe_address(endpoint: str) -> tuple[str, int] | None:
    """The host and port a connection to ``endpoint`` goes to first: its proxy's, when one applies."""
    parts = urlsplit(endpoint)
    if not parts.hostname:
        return None
    scheme = parts.scheme or "https"
    target = (parts.hostname, parts.port or (443 if scheme == "https" else 80))
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if p.hostname:
            return p.hostname, p.port or (443 if p.scheme == "https" else 80)
    return target


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connect to the Hub's host (or its proxy), ``timeout`` seconds at most, DNS included.

    The answer is kept for :data:`PROBE_TTL_S` seconds. A connect says nothing about
    the files; it only tells "no network" apart from everything else.
    """
    endpoint = hub_endpoint()
    with _probe_lock:
        hit = _probes.get(endpoint)
        if hit is not None and time.monotonic() - hit[0] < PROBE_TTL_S:
            return hit[1]
        address = _probe_address(endpoint)
        ok = True if address is None else _connects(address, timeout)
        _probes[endpoint] = (time.monotonic(), ok)
        return ok


def _connects(address: tuple[str, int], timeout: float) -> bool:
    """Connect in a thread so a name lookup that hangs cannot outlast ``timeout``."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=attempt, name="image2prompt-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return bool(result and result[0])
