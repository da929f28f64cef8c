"""The ``image2prompt`` command line (click). ``main`` is the console-script entry point."""

from __future__ import annotations

from .main import cli, main

__all__ = ["cli", "main"]
