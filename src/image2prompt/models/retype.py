"""Swapping a loaded model's modules for subclasses that run faster here.

Each swap changes ``module.__class__`` on one loaded model only: the weights, the
state dict and every other attribute stay as they were, and the subclass falls back
to its base's forward wherever its own does not apply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["retype"]


def retype(model: Any, made: type | None, accept: Callable[[str, Any], bool] | None = None) -> int:
    """Give ``made`` (a subclass of one module class) to every module of ``model`` that is
    exactly its base class and that ``accept(name, module)``, if given, takes. Returns how
    many changed (0 when ``made`` is None: a library version that lacks the base)."""
    if made is None:
        return 0
    base = made.__mro__[1]
    n = 0
    for name, module in model.named_modules():
        if type(module) is base and (accept is None or accept(name, module)):
            module.__class__ = made
            n += 1
    return n
