"""``image2prompt serve``: the HTTP service and web UI (needs the ``serve`` extra)."""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING, Any

import click

from ..service import SERVE_FORMATS, SERVE_MAX_PIXELS
from .app import CONTEXT_SETTINGS, FatalError, load_interrogator, model_config
from .options import (
    max_pixels_option,
    memory_budget_option,
    model_options,
    pick_captioner,
    pick_clip,
    verbosity_options,
)
from .progress import PROG, setup_logging

if TYPE_CHECKING:  # pragma: no cover
    from ..interrogator import Interrogator

API_KEY_ENV = "IMAGE2PROMPT_API_KEY"


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command(context_settings=CONTEXT_SETTINGS, short_help="Serve the models over HTTP, with a web UI.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs an API key (or --insecure-no-auth).")
@click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True)
@model_options("Default: blip-large (blip-base with --low-vram).")
@click.option("--api-key", metavar="KEY", envvar=API_KEY_ENV, show_envvar=True,
              help="Clients must send it (X-API-Key: KEY, Authorization: Bearer KEY, or HTTP Basic auth with KEY "
                   "as the password).")
@click.option("--insecure-no-auth", is_flag=True, help="Bind a non-loopback address with no API key.")
@click.option("--allow-urls", is_flag=True,
              help='Let clients send {"url": ...}; private, loopback and link-local addresses are still refused.')
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Allow browser pages from ORIGIN (e.g. https://app.example.com) to call the API. Repeatable; "
                   "off by default.")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.01), default=20, show_default=True, metavar="MB",
              help="Largest image (or request body) accepted; batch uploads may total --max-batch-mb.")
@click.option("--max-batch-mb", type=click.FloatRange(min=0.01), default=256, show_default=True, metavar="MB")
@max_pixels_option(SERVE_MAX_PIXELS,
                   "Refuse images with more than N pixels (413). Memory: each waiting request holds 3 bytes a pixel.")
@click.option("--formats", default=",".join(SERVE_FORMATS), show_default=True, metavar="LIST",
              help="Image formats accepted (Pillow names, comma-separated); others get 415.")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True, metavar="N",
              help="Requests encoded and searched together in one micro-batch; 1 turns micro-batching off.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5, show_default=True, metavar="MS",
              help="How long the model worker waits to fill a micro-batch once it has one request.")
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True, metavar="N",
              help="Requests that may wait; past that the server answers 503 with Retry-After.")
@click.option("--max-queue-mb", type=click.IntRange(min=1), default=512, show_default=True, metavar="MB",
              help="Decoded images that may wait, in MB (each is reduced to the size the models need first); "
                   "past that the server answers 503 with Retry-After.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=300, show_default=True, metavar="S",
              help="Seconds a request may wait for its result (504 after; its work is cancelled if not started).")
@click.option("--header-timeout", type=click.FloatRange(min=0.1), default=10, show_default=True, metavar="S",
              help="Seconds a client may take to send a request's headers; the connection is closed after.")
@click.option("--body-timeout", type=click.FloatRange(min=0.1), default=30, show_default=True, metavar="S",
              help="Seconds a client may pause while sending a request's body (408 after).")
@memory_budget_option
@verbosity_options
def serve(host: str, port: int, target: str | None, clip_name: tuple[str, ...], caption_model: str | None,
          caption: str | None, vocab: tuple[str, ...], device: str, precision: str, caption_precision: str | None,
          low_vram: bool, cache_dir: str | None, api_key: str | None, insecure_no_auth: bool, allow_urls: bool,
          cors_origins: tuple[str, ...], max_upload_mb: float, max_batch_mb: float, max_pixels: int | None,
          formats: str, max_batch: int, max_wait_ms: float, max_queue: int, max_queue_mb: int, timeout: float,
          header_timeout: float, body_timeout: float, memory_budget: int | None, quiet: bool, verbose: bool,
          debug: bool) -> None:
    """Serve one loaded model to many clients over HTTP, with a web UI at /.

    Routes: POST /v1/interrogate, /v1/analyze and /v1/batch; GET /v1/models, /healthz,
    /readyz; API docs at /docs and /redoc; and the routes of existing clients: the A1111
    clip-interrogator extension's /interrogator/models, /interrogator/prompt and
    /interrogator/analyze, and A1111's /sdapi/v1/interrogate.

    Concurrent requests are micro-batched: their images share forward passes and
    their searches run in lockstep. It binds 127.0.0.1 unless told otherwise; any other
    address needs --api-key (or $IMAGE2PROMPT_API_KEY) or --insecure-no-auth.
    """
    setup_logging(verbose, debug, quiet)
    if caption:
        raise click.UsageError("serve: --caption is per request (send the caption field)")
    if api_key is not None and not api_key.strip():
        raise click.UsageError("--api-key is empty")
    if not is_loopback(host) and not api_key and not insecure_no_auth:
        raise click.UsageError(f"--host {host} is reachable from other machines: give --api-key KEY "
                               f"(or ${API_KEY_ENV}), or --insecure-no-auth to serve without one")
    try:
        import uvicorn

        from ..server import ServerConfig, create_app
        from ..server.protocol import http_protocol
    except ImportError as err:
        raise FatalError(f"serve needs the serve extra ({err.name or err} is missing): "
                         "pip install 'image2prompt[serve]'") from None
    if not quiet:  # one line per request, with its latency
        logging.getLogger(f"{PROG}.server").setLevel(logging.DEBUG if debug else logging.INFO)
    clip = pick_clip(clip_name, target)
    captioner = pick_captioner(caption_model)
    names = tuple(f.strip().upper() for f in formats.split(",") if f.strip())
    if not names:
        raise click.UsageError("--formats is empty")
    config = ServerConfig(
        api_key=api_key or None, allow_urls=allow_urls, cors_origins=cors_origins,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_batch_bytes=int(max_batch_mb * 1024 * 1024),
        max_pixels=max_pixels, formats=names, max_batch=max_batch, max_wait=max_wait_ms / 1000,
        max_queue=max_queue, max_queue_bytes=max_queue_mb * 1024 * 1024, timeout=timeout,
        loopback_only=is_loopback(host), header_timeout=header_timeout, body_timeout=body_timeout)
    failed: list[str] = []
    server: Any = None

    # built here, not in the loading thread: the options (caption ones too) are this command's
    models = model_config(clip=clip, captioner=captioner, device=device, precision=precision,
                          caption_precision=caption_precision, cache_dir=cache_dir, vocab=vocab,
                          low_vram=low_vram, memory_budget_mb=memory_budget)

    def load() -> Interrogator:
        return load_interrogator(models, show_progress=False, debug=debug)

    def load_failed(message: str) -> None:
        failed.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(load, config, on_load_error=load_failed)
    uv_config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                               server_header=False, timeout_graceful_shutdown=5,
                               http=http_protocol(config.header_timeout))
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    server = uvicorn.Server(uv_config)
    shown = f"[{host}]" if ":" in host else host
    if not quiet:
        click.echo(f"{PROG}: serving http://{shown}:{port}/ (the UI; API docs at /docs); loading "
                   f"{' + '.join(clip)}... (GET /readyz says when it is ready)", err=True)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C after its graceful shutdown: a normal stop
        pass
    if failed:
        raise FatalError(f"the models failed to load: {failed[0]}")
    if not server.started:
        raise FatalError(f"could not serve on {shown}:{port} (is the port in use?)")
