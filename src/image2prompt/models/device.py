"""Device and precision selection. Imports torch: only models/ may import this."""

from __future__ import annotations

import threading
from typing import Any

import torch

DeviceLike = str | torch.device | None

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: DeviceLike = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu. Strings like ``cuda:1`` and devices pass through."""
    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        # torch's own message lists every device type it knows (xla, hpu, ...): not ours to offer
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} asked for, but MPS is not available; use --device cpu")
    return dev


def resolve_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """fp16 on any CUDA device, fp32 elsewhere; ``bf16``/``fp16``/``fp32`` force a choice.

    MPS stays fp32 by default: fp16 there has produced NaNs in CLIP towers.
    """
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is not supported on CPU (it is slow and inaccurate there); use bf16 or fp32")
    return _DTYPES[precision]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}.get(dtype, str(dtype))


class LoadedModel:
    """A loaded model's ``__repr__`` and its ``offload()``/``activate()`` (low-VRAM mode): its weights,
    ``model``, live on ``_home`` when active; ``device`` is where they are now, ``_lock`` guards their use."""

    name: str
    model: Any
    device: torch.device
    dtype: torch.dtype
    _home: torch.device
    _lock: threading.RLock

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, device={self.device}, dtype={dtype_name(self.dtype)})"

    def offload(self) -> None:
        if self._home.type != "cpu":
            with self._lock:
                self.model.to("cpu")
                self.device = torch.device("cpu")

    def activate(self) -> None:
        if self.device != self._home:
            with self._lock:
                self.model.to(self._home)
                self.device = self._home
