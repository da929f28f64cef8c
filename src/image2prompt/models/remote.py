"""A captioner that asks a vision-language model behind an OpenAI-compatible API.

Any server with ``POST /v1/chat/completions`` that takes image parts (vLLM, llama.cpp's
server, Ollama, LM Studio, SGLang, ``transformers serve``, hosted APIs) captions the
images: :class:`RemoteCaptioner` sends each image inline, as a base64 ``data:`` URL in an
``image_url`` part with a short instruction, and returns the answers in order. No torch
here: the model runs in the server.

Why one module over 500 lines: the client's retry, backoff, error mapping and memo are one
state machine around one ``httpx.Client``; the module docstring below is a fifth of it.

Names and settings
------------------
``--caption-model openai:MODEL`` (``Config.captioner``) names the model the server serves;
``openai:`` alone takes the first model ``GET /v1/models`` lists. The scheme is the API's
name, not a vendor's: every server above speaks it, and a name in the existing
``--caption-model`` option needs no new flag to choose it. The rest comes from ``Config``
(``caption_endpoint``, ``caption_concurrency``, ``caption_prompt``) or the environment:

``IMAGE2PROMPT_CAPTION_ENDPOINT``
    the API's base URL, the part before ``/chat/completions``
    (default ``http://127.0.0.1:8000/v1``, where vLLM and ``transformers serve`` listen);
``IMAGE2PROMPT_CAPTION_CONCURRENCY``
    how many requests are in flight at once (default 4);
``IMAGE2PROMPT_CAPTION_API_KEY``, then ``OPENAI_API_KEY``
    the key, sent as ``Authorization: Bearer``. Only from the environment, so that it never
    shows in a process list, and never in a log line, an error or a ``repr``.

``max_tokens`` (the caption length, ``Config.caption_max_tokens``) is always sent: without
it some servers (``transformers serve``) generate a thousand tokens or more.

Failures
--------
The endpoint is checked once, when the captioner is made (``GET /models``), so a wrong URL
fails before any image. A dead or misconfigured endpoint (connection refused, a host that
does not resolve, a refused key, an unknown model) raises :class:`CaptionerUnavailable`, a
:class:`~image2prompt.errors.ModelLoadError` whose one line names the URL and the cause:
the work unit (:mod:`image2prompt.work`) treats it as fatal and the run stops. Busy or
failing servers (429, 5xx, timeouts) are retried a bounded number of times with
exponential backoff and jitter, waiting at least what ``Retry-After`` asks. An answer that
is bad for one image (a 400 about it, malformed JSON, an empty caption after the retries)
fails that image only: ``caption()`` raises :class:`CaptionFailed`, naming its position,
and the work unit then captions each image of the batch alone. The other images' captions
are kept for a while (by image and request), so that retry does not ask for them again.

Answers are cleaned minimally here (surrounding whitespace, one line); the interrogator
cleans them further, as it does every captioner's.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import io
import json
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import ModelLoadError, one_line
from ._registry import REMOTE as REMOTE_SCHEME
from .instructions import DEFAULT_INSTRUCTION, caption_identity

log = logging.getLogger(__name__)

__all__ = [
    "API_KEY_ENVS",
    "CONCURRENCY_ENV",
    "DEFAULT_ENDPOINT",
    "ENDPOINT_ENV",
    "REMOTE_SCHEME",
    "CaptionFailed",
    "CaptionerUnavailable",
    "RemoteCaptioner",
    "load_remote_captioner",
]

ENDPOINT_ENV = "IMAGE2PROMPT_CAPTION_ENDPOINT"
CONCURRENCY_ENV = "IMAGE2PROMPT_CAPTION_CONCURRENCY"
#: Where the key is read from, first found wins.
API_KEY_ENVS = ("IMAGE2PROMPT_CAPTION_API_KEY", "OPENAI_API_KEY")
DEFAULT_ENDPOINT = "http://127.0.0.1:8000/v1"
DEFAULT_CONCURRENCY = 4
_RETRY_STATUS = frozenset({408, 425, 429})  # and every 5xx
_MAX_WAIT = 60.0  # the longest one wait between tries, whatever Retry-After asks
_MEMO_SIZE = 512  # captions kept for a batch's retry one image at a time


class CaptionerUnavailable(ModelLoadError):
    """The caption server cannot be used at all (not running, wrong URL, refused key, unknown
    model): every image would fail, so the run stops. The message is one line naming the URL."""


class CaptionFailed(RuntimeError):
    """The server gave no usable caption for one image of a batch (not a library error: the
    work unit retries the batch's images one at a time, and only this one fails).

    ``position`` is the image's index in the ``caption()`` call (0-based; the message counts
    from 1), ``failed`` every position that failed in that call."""

    def __init__(self, message: str, position: int, failed: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.position = position
        self.failed = tuple(failed) or (position,)


class _ItemError(Exception):
    """One request's final failure for its image (internal: becomes CaptionFailed)."""


class _Retry(Exception):
    """A try that may succeed later (internal)."""

    def __init__(self, reason: str, wait_at_least: float = 0.0) -> None:
        super().__init__(reason)
        self.wait_at_least = wait_at_least


def display_url(url: str) -> str:
    """``url`` without credentials or query (a key can hide in either), for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def normalise_endpoint(url: str) -> str:
    """The API's base URL: stripped, no trailing slash, and ``/chat/completions`` taken off when
    the whole path was given."""
    url = url.strip().rstrip("/")
    for tail in ("/chat/completions", "/models"):
        if url.endswith(tail):
            url = url[: -len(tail)]
    if not url:
        raise CaptionerUnavailable("the caption server's URL is empty: set "
                                   f"{ENDPOINT_ENV} to its base URL, e.g. {DEFAULT_ENDPOINT}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CaptionerUnavailable(f"{display_url(url) or url!r}: not an http(s) URL; set {ENDPOINT_ENV} "
                                   f"to the API's base URL, e.g. {DEFAULT_ENDPOINT}")
    return url


def api_key_from_env() -> str | None:
    """The API key from the environment (:data:`API_KEY_ENVS`, first set wins), or None."""
    for var in API_KEY_ENVS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return None


def encode_image(image: Any, *, max_side: int | None = None) -> str:
    """A PIL image as a ``data:`` URL: JPEG (quality 95) for RGB and greyscale images, PNG for
    others (transparency, palettes), reduced first so its longer side is at most ``max_side``."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if image.mode in ("RGB", "L"):
        image.save(buf, format="JPEG", quality=95)
        mime = "image/jpeg"
    else:
        image.save(buf, format="PNG")
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def clean_answer(text: str) -> str:
    """The minimal cleaning done here: one line, no surrounding whitespace."""
    return " ".join(text.split())


def _retry_after(headers: Any) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (a number or an HTTP date), or None."""
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_detail(response: Any) -> str:
    """The server's own words for an error response, short."""
    try:
        body = response.json()
    except ValueError:
        return one_line(response.text, 200)
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return one_line(err if isinstance(err, str) else json.dumps(err), 200)
    return one_line(json.dumps(body), 200)


def _status_line(response: Any) -> str:
    detail = _error_detail(response)
    phrase = getattr(response, "reason_phrase", "") or ""
    head = f"HTTP {response.status_code}{' ' + phrase if phrase else ''}"
    return f"{head}: {detail}" if detail else head


def _connect_cause(err: BaseException) -> str:
    text = str(err).lower()
    if "refused" in text:
        return "connection refused: is the caption server running?"
    if any(s in text for s in ("name or service not known", "nodename nor servname", "getaddrinfo",
                               "name resolution", "no address associated", "errno -2", "errno -3", "errno 8")):
        return "the host name does not resolve"
    return f"cannot connect ({one_line(err, 200) or type(err).__name__})"


def _answer_text(body: Any) -> str:
    """``choices[0].message.content`` of a chat completion (a string, or a list of text parts)."""
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("the answer has no choices[0].message.content") from None
    if content is None:
        return ""
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    if not isinstance(content, str):
        raise ValueError(f"the answer's content is a {type(content).__name__}, not text")
    return content


class RemoteCaptioner:
    """Captions images with a VLM behind an OpenAI-compatible ``/chat/completions`` API.

    ``model`` is the served model's id (None: the first ``GET /models`` lists); ``endpoint``
    the API's base URL (default: ``$IMAGE2PROMPT_CAPTION_ENDPOINT``, else
    :data:`DEFAULT_ENDPOINT`); ``instruction`` the text sent with each image; ``max_tokens``
    the caption's length limit, always sent; ``concurrency`` the most requests in flight at
    once, across every thread that calls :meth:`caption`; ``timeout`` seconds per request;
    ``retries`` the tries after the first for a busy or failing server, waiting ``backoff``
    seconds doubled each time (with jitter; at least what ``Retry-After`` asks); ``max_side``
    reduces images whose longer side is larger before they are sent (None: sent as they
    are). ``name`` is what results name the captioner by (default ``openai:MODEL``).

    The key is read from the environment only (:data:`API_KEY_ENVS`). Safe to share across
    threads; :meth:`close` releases the connections and threads.
    """

    chat = True  # its answers are a chat model's: the interrogator cleans them (prompt.answers)
    concurrent = True  # it works on another machine: a Runner asks it ahead, while CLIP works

    def __init__(self, model: str | None = None, *, endpoint: str | None = None,
                 instruction: str | None = None, max_tokens: int = 77, concurrency: int = DEFAULT_CONCURRENCY,
                 timeout: float = 120.0, retries: int = 3, backoff: float = 0.5,
                 max_side: int | None = None, name: str | None = None) -> None:
        try:
            import httpx
        except ImportError:
            raise ModelLoadError("a caption server needs httpx: pip install 'image2prompt[remote]'") from None

        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if max_side is not None and max_side < 1:
            raise ValueError(f"max_side must be a positive number of pixels or None, got {max_side}")
        self.endpoint = normalise_endpoint(endpoint if endpoint is not None
                                           else os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT)
        self.url = display_url(self.endpoint)  # what messages and logs show
        self.instruction = instruction if instruction is not None else DEFAULT_INSTRUCTION
        self.max_tokens = int(max_tokens)
        self.concurrency = int(concurrency)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_side = max_side
        headers = {"Accept": "application/json"}
        key = api_key_from_env()
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        del key
        self._client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            follow_redirects=True)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._memo: OrderedDict[str, str] = OrderedDict()
        self._memo_lock = threading.Lock()
        try:
            self.model = self._check(model)
        except BaseException:
            self._client.close()
            raise
        self.name = name if name is not None else f"{REMOTE_SCHEME}{self.model}"
        log.info("captioning with %s at %s (%d requests at a time, max_tokens %d)",
                 self.model, self.url, self.concurrency, self.max_tokens)

    @property
    def identity(self) -> str:
        """Its name in the fingerprint, with its instruction's hash (another instruction, another caption)."""
        return caption_identity(self.name, self.instruction)

    def __repr__(self) -> str:
        return (f"RemoteCaptioner({self.name!r}, model={self.model!r}, endpoint={self.url!r}, "
                f"concurrency={self.concurrency})")

    #: The server resizes images itself: none is asked of the front ends unless ``max_side`` is set.
    @property
    def input_side(self) -> int | None:
        return self.max_side

    # -- the endpoint ---------------------------------------------------------------------
    def _unavailable(self, cause: str) -> CaptionerUnavailable:
        return CaptionerUnavailable(f"{self.url}: {cause}")

    def _check(self, model: str | None) -> str:
        """``GET /models`` once: the endpoint answers, the key is accepted, the model is served."""
        try:
            response = self._send("GET", "/models", None)
        except _Retry as e:
            raise self._unavailable(f"GET /models failed after {self.retries + 1} tries ({e})") from None
        if response.status_code == 404:
            raise self._unavailable("GET /models: HTTP 404: is this the API's base URL (it usually ends in /v1)?")
        if response.status_code >= 400:
            raise self._unavailable(f"GET /models: {_status_line(response)}")
        try:
            data = response.json()["data"]
            ids = [str(m["id"]) for m in data]
        except (ValueError, KeyError, TypeError):
            raise self._unavailable("GET /models did not answer an OpenAI-style model list: "
                                    "is this an OpenAI-compatible API?") from None
        if model is None:
            if not ids:
                raise self._unavailable(f"the server lists no models; name one with {REMOTE_SCHEME}MODEL")
            return ids[0]
        if model not in ids:
            shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            raise self._unavailable(f"unknown model {model!r}; the server has: {shown or 'none'}")
        return model

    def _send(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        """One request, retried while the server is busy or failing; returns the last response
        that is not retried. A connection that cannot be made raises CaptionerUnavailable;
        ``_Retry`` when the tries run out."""
        import httpx

        attempt = 0
        while True:
            try:
                try:
                    response = self._client.request(method, f"{self.endpoint}{path}", json=payload)
                except httpx.TimeoutException as e:
                    raise _Retry(f"no answer within {self.timeout:g} s ({type(e).__name__})") from None
                except httpx.ConnectError as e:
                    if attempt == 0 and path == "/models":  # the check at construction: at once
                        raise self._unavailable(_connect_cause(e)) from None
                    raise _Retry(_connect_cause(e)) from None
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
                    raise _Retry(f"the connection broke ({one_line(e, 120) or type(e).__name__})") from None
                if response.status_code in _RETRY_STATUS or response.status_code >= 500:
                    raise _Retry(_status_line(response), _retry_after(response.headers) or 0.0)
                return response
            except _Retry as e:
                if attempt >= self.retries:
                    if "connection refused" in str(e) or "does not resolve" in str(e):
                        raise self._unavailable(str(e)) from None
                    raise
                delay = self._delay(attempt, e.wait_at_least)
                log.debug("%s %s%s: %s; trying again in %.2f s", method, self.url, path, e, delay)
                time.sleep(delay)
                attempt += 1

    def _delay(self, attempt: int, at_least: float) -> float:
        """Exponential backoff with jitter (between half and all of ``backoff * 2**attempt``),
        and never less than what the server asked."""
        if at_least > 0:
            return min(_MAX_WAIT, at_least) + random.random() * min(0.1 * at_least, 1.0)
        return min(_MAX_WAIT, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)

    # -- captions -------------------------------------------------------------------------
    def _payload(self, url: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": self.instruction},
            ]}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": False,
        }

    def _memo_key(self, url: str) -> str:
        h = hashlib.sha256(url.encode("ascii"))
        h.update(f"\0{self.model}\0{self.max_tokens}\0{self.instruction}".encode())
        return h.hexdigest()

    def _caption_one(self, image: Any) -> str:
        url = encode_image(image, max_side=self.max_side)
        key = self._memo_key(url)
        with self._memo_lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                return self._memo[key]
        text = self._ask(url)
        with self._memo_lock:
            self._memo[key] = text
            while len(self._memo) > _MEMO_SIZE:
                self._memo.popitem(last=False)
        return text

    def _ask(self, url: str) -> str:
        """One image's caption, retrying busy servers, malformed and empty answers."""
        payload = self._payload(url)
        attempt = 0
        while True:
            try:
                response = self._send("POST", "/chat/completions", payload)
            except _Retry as e:
                raise _ItemError(f"{e} (after {self.retries + 1} tries)") from None
            code = response.status_code
            if code in (401, 403):
                raise self._unavailable(f"POST /chat/completions: {_status_line(response)}")
            if code == 404:
                raise self._unavailable(f"POST /chat/completions: {_status_line(response)}: "
                                        f"is the model {self.model!r} served at this URL?")
            if code >= 400:
                raise _ItemError(_status_line(response))
            problem: str
            try:
                text = clean_answer(_answer_text(response.json()))
            except ValueError as e:  # includes malformed JSON
                problem = f"a malformed answer ({one_line(e, 120) or 'not JSON'})"
            else:
                if text:
                    return text
                problem = "an empty caption"
            if attempt >= self.retries:
                raise _ItemError(f"{problem} (after {attempt + 1} tries)")
            delay = self._delay(attempt, 0.0)
            log.debug("%s: %s; asking again in %.2f s", self.url, problem, delay)
            time.sleep(delay)
            attempt += 1

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="image2prompt-caption")
            return self._pool

    def caption(self, images: Sequence[Any], *, batch_size: int = 16) -> list[str]:
        """One caption per image, in order, with up to ``concurrency`` requests in flight
        (``batch_size`` is not used: each image is its own request).

        Raises :class:`CaptionerUnavailable` when the server cannot be used (at once: the
        requests not yet sent are dropped), and :class:`CaptionFailed` naming the first image
        without a caption once the others have been answered."""
        n = len(images)
        if n == 0:
            return []
        pool = self._executor()
        futures: list[Future[str]] = [pool.submit(self._caption_one, image) for image in images]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for f in done:
            err = f.exception()
            if err is not None and not isinstance(err, _ItemError):  # fatal (or a bug): stop now
                for other in futures:
                    other.cancel()
                raise err
        wait(futures)
        failed = [i for i, f in enumerate(futures) if f.exception() is not None]
        for i in failed:
            err = futures[i].exception()
            if err is not None and not isinstance(err, _ItemError):
                raise err
        if failed:
            first = failed[0]
            more = f" ({len(failed) - 1} other images failed too)" if len(failed) > 1 else ""
            raise CaptionFailed(f"{self.url}: no caption for image {first + 1} of {n}: "
                                f"{futures[first].exception()}{more}", first, failed)
        return [f.result() for f in futures]

    def close(self) -> None:
        """Release the connections and the request threads (the captioner cannot be used after)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def __enter__(self) -> RemoteCaptioner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _env_int(var: str, default: int) -> int:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ModelLoadError(f"{var}={raw!r}: expected a whole number") from None
    if value < 1:
        raise ModelLoadError(f"{var}={raw!r}: expected 1 or more")
    return value


def load_remote_captioner(name: str, model: str | None, *, max_new_tokens: int = 77,
                          **options: Any) -> RemoteCaptioner:
    """The captioner for ``openai:MODEL`` (``model`` None: the server's first): the endpoint,
    concurrency and instruction from the environment (see the module's docstring) unless
    ``options`` give them (any :class:`RemoteCaptioner` argument)."""
    options.setdefault("endpoint", os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT)
    options.setdefault("concurrency", _env_int(CONCURRENCY_ENV, DEFAULT_CONCURRENCY))
    options.setdefault("max_tokens", max_new_tokens)
    return RemoteCaptioner(model, name=name, **options)
