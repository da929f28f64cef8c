"""Loading helpers shared by the CLIP and captioner backends (transformers ``from_pretrained``).

No torch import at module level: the dtype and device arrive from the caller.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelLoadError, one_line


def hub_hint() -> str:
    """What to do when weights cannot be fetched: the Hub cache, offline mode, local folders."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        HF_HUB_CACHE = "~/.cache/huggingface/hub"
    return (
        "Weights are downloaded from the Hugging Face Hub on first use; offline (HF_HUB_OFFLINE=1) "
        f"they must already be in {HF_HUB_CACHE}. To use weights on disk, pass local-dir:PATH."
    )


def load_transformers(model_cls: Any, processor_cls: Any, source: str, dtype: Any, dev: Any,
                      what: str) -> tuple[Any, Any]:
    """from_pretrained for a model and its processor; any failure or missing weight is a ModelLoadError."""
    try:
        model, info = model_cls.from_pretrained(source, dtype=dtype, output_loading_info=True)
        processor = processor_cls.from_pretrained(source)
    except Exception as e:  # noqa: BLE001 - transformers raises many types; all mean "could not load"
        raise ModelLoadError(f"could not load {what}: {one_line(e) or type(e).__name__}. {hub_hint()}") from e
    require_complete(what, info)
    return model.to(dev).eval(), processor


def require_complete(name: str, loading_info: dict) -> None:
    """transformers initialises missing weights randomly with only a warning: make that an error."""
    missing = [k for k in loading_info.get("missing_keys", ()) if "position_ids" not in k]
    if missing:
        shown = ", ".join(sorted(missing)[:5])
        raise ModelLoadError(
            f"{name}: the checkpoint lacks {len(missing)} weights ({shown}...); "
            "refusing to run with randomly initialised layers"
        )
