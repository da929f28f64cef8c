"""uvicorn's HTTP protocol with a deadline for a request's headers.

uvicorn times out an idle keep-alive connection, but not a client that opens a connection and sends its
headers a byte at a time (or nothing at all): each such connection is held for ever. Here a connection gets
``header_timeout`` seconds from its first byte (or from being opened) to finish a request's headers, and is
closed when it does not. The body has its own timeout, per piece, in the application (408).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


class _HeaderDeadline:
    """Mixed in before uvicorn's protocol class (httptools' or h11's): both keep the request in flight as
    ``self.cycle``, which is replaced once a new request's headers are complete."""

    header_timeout: float = 10.0
    cycle: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._seen_cycle: Any = None
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not None and self.cycle is not self._seen_cycle:  # a request's headers are complete
            self._seen_cycle = self.cycle
            self._disarm()
        elif self._waiting_for_headers():  # the start of the next request on a kept-alive connection
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _waiting_for_headers(self) -> bool:
        return self.cycle is self._seen_cycle and (self.cycle is None or self.cycle.response_complete)

    def _arm(self) -> None:
        if self._deadline is None:  # not restarted by each byte: a trickle gets the same deadline
            self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            log.info("closed a connection that sent no complete request headers in %g s", self.header_timeout)
            self.transport.close()


def http_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's default HTTP protocol (httptools when installed, else h11) with the header deadline."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return type("HTTPProtocolWithHeaderDeadline", (_HeaderDeadline, AutoHTTPProtocol),
                {"header_timeout": header_timeout})
