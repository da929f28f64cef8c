"""Model names as clients see them: a folder on the server by its base name, so the server's paths stay in its log."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..interrogator import Interrogator

LOCAL_DIR = "local-dir:"


def shown_model_name(name: str) -> str:
    """A model's name as clients see it: a folder on the server by its base name
    (``local-dir:/srv/models/my-clip`` -> ``local-dir:my-clip``), so the server's paths stay in its log."""
    # a captioner may be given a bare folder
    folder = name.startswith((LOCAL_DIR, "/", "~", "./", "../", "\\")) or name[1:3] in (":/", ":\\")
    if not folder:
        return name  # ARCH/TAG, hf-hub:ORG/REPO, a short captioner name: no path in it
    path = name.removeprefix(LOCAL_DIR)
    base = path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return LOCAL_DIR + (base or "model")


def model_names(ip: Interrogator) -> list[tuple[str, str]]:
    """(the loaded name, the shown name) of every model, longest first (for replacing inside joined names)."""
    names = [c.name for c in ip.clips] + ([ip.caption_name] if ip.caption_name else [])
    return sorted(((n, shown_model_name(n)) for n in names), key=lambda p: -len(p[0]))


def public(ip: Interrogator, data: Any) -> Any:
    """A result's or analysis's dictionary with the models' shown names (also in nested results)."""
    if isinstance(data, list):
        return [public(ip, v) for v in data]
    if not isinstance(data, dict):
        return data
    out = {}
    for key, value in data.items():
        if key in ("clip_model", "caption_model") and isinstance(value, str):
            for real, shown in model_names(ip):
                value = value.replace(real, shown)
        elif isinstance(value, (dict, list)) and key in ("negative", "result"):
            value = public(ip, value)
        out[key] = value
    return out
