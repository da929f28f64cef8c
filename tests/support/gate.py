"""Hold a real interrogator's next encodes until the test lets them go (to line requests up)."""

from __future__ import annotations

import threading

import pytest

from image2prompt import Interrogator


def gate_encode(monkeypatch: pytest.MonkeyPatch, ip: Interrogator, timeout: float = 60.0) -> threading.Event:
    """Every ``ip.encode`` waits for the returned event (then runs the real encode)."""
    gate = threading.Event()
    real = ip.encode

    def encode(*args, **kwargs):  # type: ignore[no-untyped-def]
        gate.wait(timeout)
        return real(*args, **kwargs)

    monkeypatch.setattr(ip, "encode", encode)
    return gate
