"""The server's outermost middleware: one log line per request with its latency, the body's size
and time limits, the API key, and the refusals of other sites' pages (Host and Origin checks)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import logging
import time
from collections.abc import MutableMapping
from typing import Any

from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from .errors import HTTPError, error_response
from .state import ServerConfig

log = logging.getLogger(__name__)

#: Paths answered without an API key: liveness, readiness, the UI's page and the API docs (both pages, their
#: schema and, under DOCS_ASSETS, their scripts: the fastapi-offline package's copies, so they work offline).
OPEN_PATHS = ("/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/favicon.ico")
DOCS_ASSETS = "/docs-assets"


class Guard:
    """ASGI middleware, outermost: one log line per request, the body limits, the API key and the refusals."""

    def __init__(self, app: Any, config: ServerConfig) -> None:
        self.app, self.config = app, config
        self.key = config.api_key.encode() if config.api_key else None
        self.origins = set(config.cors_origins)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [0]

        async def send_logged(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        path = scope.get("path", "")
        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                await refusal(scope, receive, send_logged)
                return
            await self.app(scope, limited(receive, self.body_limit(path), self.config.body_timeout), send_logged)
        except ClientDisconnect:  # the client went away mid-body: its doing, not a bug (499, as nginx logs it)
            status[0] = status[0] or 499
        except Exception as err:
            log.error("%s %s failed: %s", scope.get("method", "-"), path, type(err).__name__, exc_info=err)
            if not status[0]:
                await error_response(500, "internal error (the server logged the details)")(
                    scope, receive, send_logged)
        finally:
            client = scope.get("client") or ("-", 0)
            shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in path[:300])  # one line, always
            log.info("%s %s %s %d %.1fms", client[0], scope.get("method", "-"), shown, status[0],
                     1000 * (time.perf_counter() - started))

    def body_limit(self, path: str) -> int:
        """Bytes a request body may have: a batch's limit, or room for one image in base64 plus fields."""
        if path == "/v1/batch":
            return self.config.max_batch_bytes
        return self.config.max_upload_bytes * 4 // 3 + 64 * 1024

    def _refusal(self, scope: dict[str, Any], path: str) -> Response | None:
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        host = headers.get("host", b"").decode("latin-1").lower()
        if self.config.loopback_only and host and not loopback_host(host):
            # DNS rebinding: a page on evil.example that resolves to 127.0.0.1 sends Host: evil.example
            # (a browser always sends Host; a request without one, HTTP/1.0's, is no such page)
            return error_response(421, f"this server answers to localhost only, not to Host {host[:80]!r}")
        origin = headers.get("origin", b"").decode("latin-1")
        # same-origin: the Host header says what the Origin does after its scheme (https://a.example:8443)
        if origin and scope.get("method") not in ("GET", "HEAD", "OPTIONS") and origin not in self.origins \
                and origin.split("://", 1)[-1].rstrip("/").lower() != host:
            # a page of another site POSTing a form here (no CORS preflight for multipart): refused
            return error_response(403, f"requests from pages on {origin[:80]} are not allowed (see --cors-origin)")
        if self.key is not None and scope.get("method") != "OPTIONS" and path not in OPEN_PATHS \
                and not path.startswith(("/static/", DOCS_ASSETS + "/")):
            given = headers.get("x-api-key", b"")
            auth = headers.get("authorization", b"")
            if not given and auth[:7].lower() == b"bearer ":
                given = auth[7:].strip()
            elif not given and auth[:6].lower() == b"basic ":  # A1111's --api-auth user:pass: the key as password
                try:
                    given = base64.b64decode(auth[6:].strip(), validate=True).partition(b":")[2]
                except (binascii.Error, ValueError):
                    given = b""
            if not hmac.compare_digest(given, self.key):
                return error_response(401, "an API key is needed: send it as X-API-Key, Authorization: Bearer, or "
                                           "the password of HTTP Basic auth", {"WWW-Authenticate": "Bearer"})
        declared = headers.get("content-length", b"")
        limit = self.body_limit(path)
        if declared.isdigit() and int(declared) > limit:
            return error_response(413, f"request body of {int(declared)} bytes is over the {limit}-byte limit")
        return None


def loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback: localhost, any of 127.0.0.0/8, ::1."""
    if host.startswith("["):  # without the port: [::1]:7860 -> [::1]
        host = host[: host.find("]") + 1] if "]" in host else host
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    name = host.strip("[]").rstrip(".")
    if name in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def limited(receive: Any, limit: int, timeout: float | None = None) -> Any:
    """``receive`` with the body's size limit (413) and, until the body is complete, ``timeout``
    seconds for each piece of it (a client that stalls mid-body gets 408, not a held connection)."""
    seen, done = 0, False

    async def wrapped() -> dict[str, Any]:
        nonlocal seen, done
        if done or timeout is None:
            message: dict[str, Any] = await receive()
        else:
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except asyncio.TimeoutError:
                raise HTTPError(408, f"the request body stalled: nothing came for {timeout:g} s",
                                {"Connection": "close"}) from None
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPError(413, f"request body is over the {limit}-byte limit")
            done = not message.get("more_body", False)
        elif message.get("type") == "http.disconnect":
            done = True
        return message

    return wrapped
