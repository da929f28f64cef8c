"""What ``--retry-failed`` needs to know: the settings and models the failed inputs ran with.

A record keeps only the settings' ``fingerprint`` (a hash), which cannot be turned back into
settings. So beside the failure manifest ``FILE.failed.txt`` (one failed input per line), the
run that wrote it leaves ``FILE.failed.json``: its settings, models and output options::

    {"fingerprint": "...", "settings": {...}, "clip": [...], "captioner": "...",
     "vocab": [...], "caption": null, "outputs": {"sidecar": {...}, "store_features": null, ...}}

:func:`describe_run` makes that object, :func:`write_run` writes it (or removes a stale one
when a run does not describe itself) and :func:`read_run` reads it back. A retry then searches
with exactly these settings and models, whatever the retry's own defaults are; the front end
refuses, in one line, an option given on the retry that says otherwise (see
``image2prompt.cli.main``). Local model folders and vocabulary paths are kept absolute, so a
retry from another folder finds them (a local captioner's name is kept as it was given: the
fingerprint holds it).

No torch here.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..settings import SearchSettings

if TYPE_CHECKING:  # pragma: no cover
    from ..interrogator import Config
    from .sidecars import SidecarOptions

__all__ = ["describe_run", "normalise_clip", "read_run", "run_outputs", "run_path", "write_run"]

log = logging.getLogger(__name__)

def run_path(output: str | os.PathLike[str]) -> Path:
    """``FILE.failed.json`` beside the output: the run that wrote ``FILE.failed.txt``."""
    p = Path(output)
    return p.with_name(p.name + ".failed.json")


def normalise_clip(name: str) -> str:
    """A CLIP model name with a local folder made absolute (``local-dir:PATH``), to compare and store."""
    if name.startswith("local-dir:"):
        return "local-dir:" + os.path.abspath(os.path.expanduser(name[len("local-dir:"):]))
    return name


def describe_run(config: Config, settings: SearchSettings, caption: str | None,
                 fingerprint: str | None, outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's settings and models, as the failure manifest keeps them (JSON types only);
    ``outputs``: its output options (``sidecar``, ``store_features``, ``store_scores``), which a
    retry takes too unless it is given its own."""
    return {
        "outputs": dict(outputs or {}),
        "fingerprint": fingerprint,
        "settings": settings.to_dict(),
        "clip": [normalise_clip(n) for n in config.clip_models],
        "captioner": config.captioner,  # as given: its name is part of the fingerprint
        "vocab": [os.path.abspath(os.path.expanduser(v)) for v in config.vocab],
        "caption": caption,
    }


def run_outputs(sidecar: SidecarOptions | None, store_features: str | os.PathLike[str] | None,
                store_scores: int | None) -> dict[str, Any]:
    """A run's output options as :func:`describe_run` keeps them (the engine's and Ray's alike)."""
    return {"sidecar": asdict(sidecar) if sidecar is not None else None,
            "store_features": os.path.abspath(store_features) if store_features else None,
            "store_scores": store_scores}


def write_run(output: str | os.PathLike[str], run: dict[str, Any] | None) -> None:
    """Write ``FILE.failed.json`` (atomically), or remove it when ``run`` is None (a run that does
    not describe itself: the file must never describe another run than the manifest's)."""
    path = run_path(output)
    try:
        if run is None:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            json.dump(run, f, sort_keys=True, ensure_ascii=False, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        log.warning("%s: cannot write the settings of the failed inputs (%s)", path, err.strerror or err)


def read_run(output: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run that wrote the output's failure manifest, or None (none kept: no failures, an
    earlier version, or a run that does not describe itself)."""
    path = run_path(output)
    try:
        with open(path, encoding="utf-8") as f:
            run = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("%s: cannot read the settings of the failed inputs (%s)", path, err)
        return None
    return run if isinstance(run, dict) and isinstance(run.get("settings"), dict) else None
