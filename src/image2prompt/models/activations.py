"""GELU for CLIP text towers on a CPU, without a oneDNN kernel per tensor shape.

On a CPU, torch runs every contiguous float32 ``F.gelu`` (exact, erf form) through
oneDNN, which JIT-compiles a kernel for each new tensor shape and keeps it in a cache
of 1,024 entries. A best-mode search feeds the text tower batches of ever-varying
shapes (the candidates left, each step's suffix length), so nearly every call compiled
a kernel, and the process grew with each search, past the point where the cache was
full: +387 MiB over 15 batches at ViT-B/32 size, against +61 MiB with torch's own
kernel, which has no per-shape state, and the same prompts (``bench/shape_memory.py``,
docs/benchmarks.md). That kernel takes over when the input is not contiguous, so
:func:`gelu_erf` hands it a transposed view of the same memory and transposes the result
back (a view again: nothing is copied).

It is used where the shapes vary, the text towers, on CPU float32 only. Elsewhere (CUDA,
the tanh approximation) the subclasses run their base's forward. bf16 on a CPU is left
as it is: there the linear layers, too, run oneDNN kernels made per shape. The image
towers, whose shapes repeat, keep oneDNN's kernels.
"""

from __future__ import annotations

import functools
import importlib
import threading
from typing import Any

import torch
import torch.nn.functional as F

from .retype import retype

__all__ = ["gelu_erf", "lean_quick_gelu", "native_gelu"]


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(x)`` (exact form) from torch's own kernel, never a oneDNN one.

    Only a contiguous input goes to oneDNN, so the rows are handed over transposed; the
    result has ``x``'s shape and is contiguous. A single row, or an input that is not
    contiguous, goes to ``F.gelu`` as it is: that is at most one shape per width, or
    torch's own kernel anyway (the result then follows the input's layout, as F.gelu's does).
    """
    width = x.shape[-1] if x.dim() else 1
    rows = x.numel() // width if width else 0
    if rows < 2 or width < 2 or not x.is_contiguous():
        return F.gelu(x)
    return F.gelu(x.reshape(rows, width).t()).t().reshape(x.shape)


def _here(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32


class NativeGELU(torch.nn.GELU):
    """``nn.GELU`` whose exact form runs through :func:`gelu_erf` on CPU float32."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.approximate == "none" and _here(input):
            return gelu_erf(input)
        return super().forward(input)


def _hf_forward(self: Any, input: torch.Tensor) -> torch.Tensor:
    if self.act is F.gelu and _here(input):
        return gelu_erf(input)
    return self.act(input)


def native_gelu(module: Any) -> int:
    """Give every exact-GELU module under ``module`` (torch's ``nn.GELU`` with
    ``approximate="none"``, transformers' ``GELUActivation`` on ``F.gelu``) the forward
    above. Returns how many changed."""
    n = retype(module, NativeGELU, lambda name, m: m.approximate == "none")
    hf = _made("NativeGELUActivation")
    if hf is not None:
        n += retype(module, hf, lambda name, m: getattr(m, "act", None) is F.gelu)
    return n


def _lean_quick_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled():  # autograd needs the intermediate values kept
        return x * torch.sigmoid(1.702 * x)
    y = torch.mul(x, 1.702)
    y.sigmoid_()
    return y.mul_(x)  # the same products in the same order: bit for bit open_clip's


#: Subclasses of other libraries' modules, made on first use (a library may be absent):
#: name -> (module, base class, forward).
_MADE = {
    "NativeGELUActivation": ("transformers.activations", "GELUActivation", _hf_forward),
    "LeanQuickGELU": ("open_clip.transformer", "QuickGELU", _lean_quick_forward),
}
_MAKE = threading.Lock()  # one class per name, even when two threads load models at once (pickling needs one)


def _made(name: str) -> type | None:
    with _MAKE:
        return _make(name)


@functools.cache
def _make(name: str) -> type | None:
    home, base_name, forward = _MADE[name]
    try:
        base = getattr(importlib.import_module(home), base_name)
    except (ImportError, AttributeError):  # pragma: no cover - the library, or this class, is absent
        return None
    # A module-level name (through __getattr__ below), so a changed model pickles.
    return type(name, (base,), {"forward": forward, "__module__": __name__})


def __getattr__(name: str) -> Any:
    if name in _MADE and _made(name) is not None:
        return _made(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def lean_quick_gelu(module: Any) -> int:
    """Give open_clip's ``QuickGELU`` modules under ``module`` a forward that makes one
    temporary, not two, outside autograd.

    open_clip's ``x * torch.sigmoid(1.702 * x)`` holds ``1.702 * x``, its sigmoid and the
    product at once, 12 widths of the MLP's activations per row where GELU holds 8, which
    the text batches' memory budget does not expect (``ClipEncoder.rows_for``). The
    models built with QuickGELU (:func:`~image2prompt.models.clip.tag_needs_quick_gelu`)
    include the default, ViT-L-14/openai. Returns how many changed.
    """
    return retype(module, _made("LeanQuickGELU"))
