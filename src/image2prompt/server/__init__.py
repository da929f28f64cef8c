"""``image2prompt serve``: an HTTP service and web UI over one loaded model (the ``serve`` extra).

:func:`create_app` builds the FastAPI application; every request goes through one
:class:`~image2prompt.service.MicroBatcher`, so concurrent clients share forward passes.
Importing this package needs FastAPI (``pip install 'image2prompt[serve]'``).
"""

from __future__ import annotations

from .app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]
