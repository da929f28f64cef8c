"""The ``image2prompt`` command line: the group with every command, and the entry point.

Only the standard library, click, PIL and numpy are imported up front; torch, open_clip and
transformers load when a model does, so ``--help``, ``models`` and ``cache info`` stay fast.

The commands live one per module over :mod:`image2prompt.cli.app` (the group, errors and
model loading) and :mod:`image2prompt.cli.options` (the shared options), never importing each
other; this module adds them to the group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from .analyze import analyze
from .app import cli, load_interrogator, model_config
from .batch import batch
from .cache import cache
from .models import models
from .progress import PROG
from .report import report  # matplotlib loads only when it runs
from .run import run
from .serve import serve  # FastAPI loads only when it runs

for _command in (run, batch, analyze, models, cache, report, serve):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point: exit 0 on success, 1 on failed inputs or load errors, 2 on usage errors."""
    cli.main(args=list(argv) if argv is not None else None, prog_name=PROG)
    raise SystemExit(0)  # pragma: no cover - cli.main always exits in standalone mode


__all__ = ["cli", "load_interrogator", "main", "model_config"]

if __name__ == "__main__":  # pragma: no cover
    main()
