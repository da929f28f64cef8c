"""Progress bars and stderr messages for the command line (tqdm is imported lazily)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from ..errors import RAISE_MAX_PIXELS

PROG = "image2prompt"

_HANDLER_MARK = "_image2prompt_cli_handler"


#: The library's front-end-neutral words for a setting -> the option that sets it here.
_CLI_WORDS = {RAISE_MAX_PIXELS: "raise it with --max-pixels N, or --max-pixels none"}


def cli_words(message: str) -> str:
    """A library message in the command line's words: where it says how to change a setting,
    it names the option (``--max-pixels``)."""
    for neutral, ours in _CLI_WORDS.items():
        message = message.replace(neutral, ours)
    return message


def progress_enabled(quiet: bool) -> bool:
    """Bars only when a person is watching: stderr is a terminal and --quiet was not given."""
    if quiet:
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def table_progress(enabled: bool) -> Callable[[str, int], Any] | None:
    """The ``progress`` factory for :meth:`Interrogator.load`: one bar per embedded table."""
    if not enabled:
        return None

    def factory(desc: str, total: int) -> Any:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="phrase", file=sys.stderr, leave=False, dynamic_ncols=True)

    return factory


class Reporter:
    """Prints one-line messages to stderr (through ``tqdm.write`` while a bar is shown, so they do not
    tear it) and owns the progress bar over inputs."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="Images", unit="img", file=sys.stderr, dynamic_ncols=True)

    def error(self, message: str) -> None:
        """One failed input, said in the command line's words (:func:`cli_words`)."""
        self.say(f"{PROG}: error: {cli_words(message)}")

    def say(self, line: str) -> None:
        if self.bar is not None:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)
        else:
            click.echo(line, err=True)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (click's test runner swaps it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it
        pass


class _Formatter(logging.Formatter):
    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        where = record.name if self.debug else PROG
        text = f"{where}: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info and self.debug:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(verbose: bool = False, debug: bool = False, quiet: bool = False) -> None:
    """Configure the ``image2prompt`` logger (the library itself never does)."""
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    logger = logging.getLogger(PROG)
    for h in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
        logger.removeHandler(h)
    handler = _StderrHandler()
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(_Formatter(debug))
    logger.addHandler(handler)
    logger.setLevel(level)
    # Ours is the only handler: open_clip's logging.info() installs a root handler, and every warning
    # would be printed twice ("image2prompt: warning: ..." and "WARNING:...").
    logger.propagate = False
