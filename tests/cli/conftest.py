"""CLI tests run the command in-process; undo the logging setup it does for a real process."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_package_logger() -> Iterator[None]:
    logger = logging.getLogger("image2prompt")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    yield
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]
