"""Loading helpers shared by the CLIP and captioner backends: Hub access and ``from_pretrained``.

Before weights are fetched from the Hugging Face Hub (names that are not local
folders), the Hub's host is probed once with a short TCP connect. When it cannot
be reached, the load runs from the local Hub cache only, with the Hub's retry
warnings silenced, and a miss is one :class:`ModelLoadError` line that says what
to do, in seconds instead of the minute of retries huggingface_hub would spend.

No torch import at module level: the dtype and device arrive from the caller.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from ..errors import ModelLoadError, one_line
from ..hub import hub_cache_dir, hub_endpoint, hub_offline, hub_reachable

T = TypeVar("T")

log = logging.getLogger(__name__)

#: What helps when a model's weights cannot be had, by kind (the command line's flags).
CLIP_ADVICE = "use weights on disk with --clip local-dir:PATH"
CAPTION_ADVICE = ("use weights on disk with --caption-model local-dir:PATH, "
                  "or skip captioning with --caption-model none --caption TEXT")

#: Loggers whose retry and download warnings are noise once the Hub is known to be unreachable.
_NOISY_LOGGERS = ("huggingface_hub", "transformers", "urllib3", "httpx", "httpcore", "filelock")

_mode_lock = threading.RLock()  # forced offline mode and quieted loggers are process-wide


@contextmanager
def _local_cache_only(force: bool) -> Iterator[None]:
    """Offline mode for huggingface_hub (and so transformers and open_clip, which ask it),
    with their retry and download warnings silenced; open_clip logs on the root logger."""
    from huggingface_hub import constants

    with _mode_lock:
        saved_offline = constants.HF_HUB_OFFLINE
        if force:
            constants.HF_HUB_OFFLINE = True
        saved_levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        root_filter = _DropOpenClipRootRecords()
        logging.getLogger().addFilter(root_filter)
        try:
            yield
        finally:
            logging.getLogger().removeFilter(root_filter)
            for name, level in saved_levels.items():
                logging.getLogger(name).setLevel(level)
            if force:
                constants.HF_HUB_OFFLINE = saved_offline


class _DropOpenClipRootRecords(logging.Filter):
    """open_clip reports download failures with ``logging.error`` on the root logger; the
    ModelLoadError says it once instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}open_clip{os.sep}" not in record.pathname or record.levelno >= logging.CRITICAL


def is_cache_miss(err: BaseException) -> bool:
    """Whether ``err`` (or an error it came from) says the files are not in the local Hub cache."""
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    except ImportError:  # pragma: no cover - huggingface_hub before 0.24
        return False
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def sentences(*parts: str) -> str:
    """Join message parts with ". ", without doubling the end punctuation a part already has."""
    out = ""
    for part in parts:
        part = part.strip()
        if not part:
            continue
        if out:
            out += " " if out.endswith((".", "!", "?")) else ". "
        out += part
    return out


def load_error(what: str, err: BaseException, *, remote: bool = True, advice: str = "",
               forced_offline: bool = False) -> ModelLoadError:
    """The one-line ModelLoadError for a failed load of ``what`` (e.g. "CLIP model 'X'")."""
    if remote and is_cache_miss(err):
        cache = hub_cache_dir()
        help_ = f"{advice}, or " if advice else ""
        if forced_offline:
            return ModelLoadError(
                f"cannot load {what}: the Hugging Face Hub ({hub_endpoint()}) cannot be reached and the "
                f"weights are not in the local cache ({cache}); {help_}download them once with a network "
                "connection (set HF_HUB_OFFLINE=1 to skip the Hub check and use only the cache)"
            )
        if hub_offline():
            return ModelLoadError(
                f"cannot load {what}: HF_HUB_OFFLINE=1 is set and the weights are not in the local cache "
                f"({cache}); {help_}unset HF_HUB_OFFLINE to download them"
            )
    reason = f"could not load {what}: {one_line(err) or type(err).__name__}"
    if not remote:
        return ModelLoadError(reason)
    return ModelLoadError(sentences(reason, "Weights are downloaded from the Hugging Face Hub on first use; offline "
                                    f"(HF_HUB_OFFLINE=1) they must already be in {hub_cache_dir()}. To use weights "
                                    "on disk, pass local-dir:PATH"))


def from_hub(load: Callable[[], T], *, what: str, remote: bool, advice: str = "") -> T:
    """Run ``load`` (which may fetch weights from the Hub); any failure is one ModelLoadError line.

    ``remote``: the name is not a local folder, so ``load`` may download. Then, unless
    the user set HF_HUB_OFFLINE, the Hub is probed first (:func:`hub_reachable`); when
    it cannot be reached, ``load`` runs from the local Hub cache only.
    """
    forced = remote and not hub_offline() and not hub_reachable()
    try:
        if remote and (forced or hub_offline()):
            with _local_cache_only(force=forced):
                return load()
        return load()
    except ModelLoadError:
        raise
    except Exception as e:
        raise load_error(what, e, remote=remote, advice=advice, forced_offline=forced) from e


def load_transformers(model_cls: Any, processor_cls: Any, source: str, dtype: Any, dev: Any,
                      what: str, *, remote: bool = True, advice: str = "") -> tuple[Any, Any]:
    """from_pretrained for a model and its processor; any failure or missing weight is a ModelLoadError.

    ``remote``: ``source`` is a Hub repository, not a local folder (see :func:`from_hub`).
    """
    def load() -> tuple[Any, Any, dict]:
        model, info = model_cls.from_pretrained(source, dtype=dtype, output_loading_info=True)
        return model, processor_cls.from_pretrained(source), info

    model, processor, info = from_hub(load, what=what, remote=remote, advice=advice)
    # transformers initialises missing weights randomly with only a warning: make that an error
    missing = [k for k in info.get("missing_keys", ()) if "position_ids" not in k]
    if missing:
        raise ModelLoadError(f"{what}: the checkpoint lacks {len(missing)} weights ({', '.join(sorted(missing)[:5])}...); "
                             "refusing to run with randomly initialised layers")
    return model.to(dev).eval(), processor


def call_plugin(loader: Callable[..., T], name: str, what: str, **kwargs: Any) -> T:
    """Run a plugin's loader; anything it raises becomes one ModelLoadError line naming the model."""
    log.info("loading %s %s from plugin %s", what, name, getattr(loader, "__module__", "?"))
    try:
        return loader(name, **kwargs)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"could not load {what} {name!r}: {one_line(e) or type(e).__name__}") from e


# --- what input size a model's preprocessing needs -------------------------------------------

_SIZE_KEYS = ("shortest_edge", "longest_edge", "height", "width", "max_height", "max_width")


def _sides(value: Any) -> list[int]:
    """The pixel sides a size setting names: an int, a (h, w) pair, or a dict / SizeDict of edges."""
    if value is None or isinstance(value, (int, tuple, list)):
        found = value if isinstance(value, (tuple, list)) else [value]
    else:
        found = [value.get(key) if isinstance(value, dict) else getattr(value, key, None) for key in _SIZE_KEYS]
    return [int(v) for v in found if isinstance(v, int) and not isinstance(v, bool)]


def transform_input_side(preprocess: Any, image_size: Any = None) -> int | None:
    """The largest side a torchvision-style ``Compose`` (open_clip's preprocess) resizes or crops
    to, and ``image_size`` (the vision tower's): an image whose shorter side is at least that
    loses nothing to a reduction first. None when the pipeline has no resize (unknown)."""
    sides: list[int] = []
    resizes = False
    for t in getattr(preprocess, "transforms", None) or ():
        found = _sides(getattr(t, "size", None)) + _sides(getattr(t, "max_size", None))
        if found and "crop" not in type(t).__name__.lower():
            resizes = True
        sides += found
    if not resizes:
        return None
    sides += _sides(image_size)
    return max(sides) if sides else None


def processor_input_side(processor: Any) -> int | None:
    """The same for a transformers processor (or image processor): the largest of its resize and
    crop sizes. None when it does not resize, or names no size."""
    ip = getattr(processor, "image_processor", processor)
    if ip is None or getattr(ip, "do_resize", True) is False:
        return None
    sides = _sides(getattr(ip, "size", None)) + _sides(getattr(ip, "crop_size", None))
    return max(sides) if sides else None
