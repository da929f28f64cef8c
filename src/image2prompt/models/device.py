"""Device and precision selection. Imports torch: only models/ may import this."""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["auto", "fp32", "fp16", "bf16"]
DeviceLike = str | torch.device | None

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: DeviceLike = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu. Strings like ``cuda:1`` and devices pass through."""
    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        # torch's own message lists every device type it knows (xla, hpu, ...): not ours to offer
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device; use --device cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
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
