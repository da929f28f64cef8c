"""Fetch a URL's bytes for the input layer, with a size cap and, for servers, only from public addresses.

:func:`download_bytes` is what :func:`~image2prompt.io.load_image` uses for URL inputs (and the batch reader
for URL lists); with ``public_only=True`` it is safe to run for a client (SSRF). Standard library only.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from image2prompt.errors import ImageLoadError

__all__ = ["MAX_DOWNLOAD_BYTES", "USER_AGENT", "download_bytes", "is_public_address"]

MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
USER_AGENT = "image2prompt"


def download_bytes(url: str, timeout: float, *, public_only: bool = False, max_bytes: int | None = None) -> bytes:
    """The body of ``url`` (at most ``max_bytes``, default :data:`MAX_DOWNLOAD_BYTES`).

    ``public_only=True`` (what a server that fetches URLs for clients needs) refuses any connection, the first
    or a redirect's, whose peer is not a public address: loopback, private, link-local (cloud metadata),
    multicast and reserved ranges are refused, and the check is made on the connected socket, so a name that
    resolves differently the second time cannot get round it. Only http and https are followed (a redirect to
    any other scheme is refused), no proxy is used (its address would be the peer), and ``timeout`` bounds the
    whole download, not each read.
    """
    cap = MAX_DOWNLOAD_BYTES if max_bytes is None else min(max_bytes, MAX_DOWNLOAD_BYTES)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        if public_only:
            scheme = urllib.parse.urlsplit(url).scheme.lower()
            if scheme not in ("http", "https"):
                raise ImageLoadError(url, "refused: only http and https URLs are fetched", kind="refused")
            response_cm = _public_opener().open(request, timeout=timeout)
        else:
            response_cm = urllib.request.urlopen(request, timeout=timeout)
        deadline = time.monotonic() + timeout
        with response_cm as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > cap:
                raise ImageLoadError(url, f"download failed: {_too_big_for_download(cap)}", kind="too_large")
            # Read one byte past the cap so a missing or lying Content-Length is caught too.
            chunks, size = [], 0
            while size <= cap:
                chunk = response.read(min(1 << 16, cap + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if public_only and time.monotonic() > deadline:
                    raise ImageLoadError(url, f"download failed: not finished within {timeout:g} s")
            data = b"".join(chunks)
    except ImageLoadError as err:  # refused by the public-address checks: name the URL
        if err.source == url:
            raise
        raise ImageLoadError(url, err.reason, kind=err.kind) from None
    except urllib.error.HTTPError as err:
        raise ImageLoadError(url, f"download failed: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, ImageLoadError):
            raise ImageLoadError(url, err.reason.reason, kind=err.reason.kind) from None
        raise ImageLoadError(url, f"download failed: {_net_reason(err.reason)}") from None
    except (OSError, http.client.HTTPException, ValueError) as err:
        raise ImageLoadError(url, f"download failed: {_net_reason(err)}") from None
    if len(data) > cap:
        raise ImageLoadError(url, f"download failed: {_too_big_for_download(cap)}", kind="too_large")
    return data


def is_public_address(address: str) -> bool:
    """True for a globally routable IP address (not loopback, private, link-local, reserved...)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            ip = embedded
    return bool(ip.is_global) and not ip.is_multicast


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64 or the old compatible form)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


class _PublicHTTPConnection(http.client.HTTPConnection):
    """Connects only to public addresses: refused before connecting when any address the name
    resolves to is not public, and after, when the connected socket's peer is not."""

    def connect(self) -> None:
        try:
            infos = socket.getaddrinfo(self.host, self.port, proto=socket.IPPROTO_TCP)
        except OSError:
            infos = []  # the connection attempt reports the name error in its own words
        if not all(is_public_address(str(info[4][0])) for info in infos):
            raise ImageLoadError(self.host, f"refused: {self.host} is not a public address (private, loopback or "
                                            "reserved)", kind="refused")
        super().connect()
        if not is_public_address(self.sock.getpeername()[0] if self.sock is not None else ""):
            if self.sock is not None:
                self.sock.close()
            raise ImageLoadError(self.host, f"refused: {self.host} is not a public address", kind="refused")


class _PublicHTTPSConnection(_PublicHTTPConnection, http.client.HTTPSConnection):
    pass


class _PublicHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_PublicHTTPConnection, req)


class _PublicHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_PublicHTTPSConnection, req)


def _too_big_for_download(cap: int) -> str:
    return (f"larger than the {cap // (1024 * 1024)} MB limit" if cap >= 1024 * 1024
            else f"larger than the {cap}-byte limit")


class _HTTPOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise ImageLoadError(req.full_url, "refused: a redirect to a URL that is not http or https",
                                 kind="refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _public_opener() -> urllib.request.OpenerDirector:
    """An opener with only what a public fetch needs: no file, ftp or data handlers, no proxies."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler({}), _PublicHTTPHandler(), _PublicHTTPSHandler(),
                    _HTTPOnlyRedirects(), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def _net_reason(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__
