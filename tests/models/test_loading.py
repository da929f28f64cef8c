"""Hub access before a download: one short probe, the local cache only when the Hub is unreachable,
and failures as one ModelLoadError line. No test here reaches past 127.0.0.1."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError

from image2prompt import hub
from image2prompt.errors import ModelLoadError
from image2prompt.models.device import resolve_device
from image2prompt.models.loading import CAPTION_ADVICE, CLIP_ADVICE, from_hub, hub_reachable, load_error, sentences


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        yield int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _fresh_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "_probes", {})
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE unset (the suite sets it), as a user without it would run."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def unreachable(online: None, monkeypatch: pytest.MonkeyPatch) -> str:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    return endpoint


def cache_miss() -> Exception:
    """What open_clip raises for weights that are neither reachable nor cached: a chain ending
    in huggingface_hub's LocalEntryNotFoundError, with a message that ends in a period."""
    try:
        try:
            raise LocalEntryNotFoundError("cannot find the requested files in the local cache.")
        except LocalEntryNotFoundError as e:
            raise FileNotFoundError(f"Failed to download file (x.bin) for org/repo. Last error: {e}") from e
    except FileNotFoundError as e:
        err = RuntimeError(f"Failed to download weights for tag 'openai': {e}")
        err.__context__ = e  # as when open_clip raises it inside its except block
        return err


def raises(err: Exception):
    def load() -> None:
        raise err

    return load


# --- the probe ---------------------------------------------------------------------------------


def test_probe_a_closed_port_is_unreachable(unreachable: str) -> None:
    assert hub_reachable() is False


def test_probe_a_listening_port_is_reachable(online: None, listener: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{listener}")
    assert hub_reachable() is True


def test_probe_runs_once_for_several_models(unreachable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []
    real = hub._connects
    monkeypatch.setattr(hub, "_connects", lambda address, timeout: calls.append(address) or real(address, timeout))
    for _ in range(3):
        with pytest.raises(ModelLoadError):
            from_hub(raises(cache_miss()), what="CLIP model 'A/b'", remote=True, advice=CLIP_ADVICE)
    assert len(calls) == 1


def test_no_probe_for_local_folders_or_when_offline(online: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_probe(*args: object, **kwargs: object) -> bool:
        raise AssertionError("the Hub was probed")

    monkeypatch.setattr(hub, "_connects", no_probe)
    assert from_hub(lambda: 7, what="CLIP model 'local-dir:x'", remote=False) == 7
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert from_hub(lambda: 8, what="CLIP model 'A/b'", remote=True) == 8


# --- unreachable: the local cache only, quietly ------------------------------------------------------


def test_unreachable_hub_loads_from_the_cache_only(unreachable: str) -> None:
    seen: dict[str, bool] = {}

    def load() -> str:
        seen["offline"] = constants.is_offline_mode()
        seen["hub_warnings"] = logging.getLogger("huggingface_hub.utils._http").isEnabledFor(logging.WARNING)
        seen["transformers_warnings"] = logging.getLogger("transformers").isEnabledFor(logging.WARNING)
        seen["urllib3_warnings"] = logging.getLogger("urllib3").isEnabledFor(logging.WARNING)
        return "cached weights"

    assert from_hub(load, what="CLIP model 'A/b'", remote=True) == "cached weights"
    assert seen == {"offline": True, "hub_warnings": False, "transformers_warnings": False,
                    "urllib3_warnings": False}
    assert constants.is_offline_mode() is False  # restored
    assert logging.getLogger("huggingface_hub").isEnabledFor(logging.WARNING)


def test_open_clip_root_logging_is_dropped_while_loading_from_the_cache(unreachable: str) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root = logging.getLogger()
    handler = Keep(logging.DEBUG)
    root.addHandler(handler)
    try:
        def load() -> None:
            fake = logging.LogRecord("root", logging.ERROR, "/site-packages/open_clip/factory.py", 1,
                                     "Failed to download weights", None, None)
            root.handle(fake)
            raise cache_miss()

        with pytest.raises(ModelLoadError):
            from_hub(load, what="CLIP model 'A/b'", remote=True, advice=CLIP_ADVICE)
    finally:
        root.removeHandler(handler)
    assert records == []
    assert not root.filters


@pytest.mark.parametrize(("what", "advice", "flags"), [
    ("CLIP model 'ViT-B-32/openai'", CLIP_ADVICE, ["--clip local-dir:PATH"]),
    ("caption model 'blip-base'", CAPTION_ADVICE,
     ["--caption-model local-dir:PATH", "--caption-model none --caption TEXT"]),
])
def test_unreachable_and_not_cached_is_one_line(unreachable: str, what: str, advice: str, flags: list[str]) -> None:
    with pytest.raises(ModelLoadError) as info:
        from_hub(raises(cache_miss()), what=what, remote=True, advice=advice)
    msg = str(info.value)
    assert "\n" not in msg and what in msg and unreachable in msg
    assert "cannot be reached" in msg and "HF_HUB_OFFLINE=1" in msg
    assert all(f in msg for f in flags)
    assert ".." not in msg and ". ." not in msg


def test_offline_and_not_cached_says_hf_hub_offline_is_set(online: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        from_hub(raises(cache_miss()), what="CLIP model 'A/b'", remote=True, advice=CLIP_ADVICE)
    msg = str(info.value)
    assert "HF_HUB_OFFLINE=1 is set" in msg and "--clip local-dir:PATH" in msg
    assert ".." not in msg and "\n" not in msg


# --- punctuation and cuts ---------------------------------------------------------------------------


def test_an_inner_error_ending_in_a_period_is_not_doubled(online: None, listener: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{listener}")
    with pytest.raises(ModelLoadError) as info:
        from_hub(raises(ValueError("The checkpoint is broken.")), what="CLIP model 'A/b'", remote=True)
    msg = str(info.value)
    assert "The checkpoint is broken. Weights are downloaded" in msg
    assert ".." not in msg and ". ." not in msg


def test_a_long_inner_error_is_cut_at_a_word() -> None:
    inner = " ".join(["abcdefgh"] * 100) + "."
    msg = str(load_error("CLIP model 'A/b'", ValueError(inner), remote=False))
    quoted = msg.split(": ", 1)[1]
    assert quoted.endswith("...") and len(quoted) < len(inner)
    assert set(quoted[:-3].split()) == {"abcdefgh"}  # only whole words before the ellipsis


def test_sentences_joins_without_doubling() -> None:
    assert sentences("one.", "two") == "one. two"
    assert sentences("one", "two") == "one. two"
    assert sentences("cut here...", "two") == "cut here... two"
    assert sentences("", "two") == "two"


# --- devices ------------------------------------------------------------------------------------------


def test_unknown_device_names_only_the_valid_choices() -> None:
    with pytest.raises(ValueError) as info:
        resolve_device("banana")
    msg = str(info.value)
    assert msg == "unknown device 'banana'; use auto, cpu, cuda, cuda:N or mps"
