"""What ``--retry-failed`` needs to know: the settings and models the failed inputs ran with.

A record keeps only the settings' ``fingerprint`` (a hash), which cannot be turned back into settings.
So beside the failure manifest ``FILE.failed.txt`` (one failed input per line), the run that wrote it
leaves ``FILE.failed.json`` (:func:`describe_run`, :func:`write_run`, :func:`read_run`): its settings,
models and output options::

    {"fingerprint": "...", "settings": {...}, "clip": [...], "captioner": "...",
     "vocab": [...], "caption": null, "outputs": {"sidecar": {...}, "store_features": null, ...}}

A retry then searches with exactly these settings and models, whatever its own defaults are:
:func:`plan_retry`, the policy every front end calls, refuses (:class:`RetryRefused`, in one line) a
setting given on the retry that says otherwise. Local model folders and vocabulary paths are kept
absolute, so a retry from another folder finds them. No torch here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SettingsError, one_line
from ..settings import SearchSettings
from .records.writers import synced, temp_beside

if TYPE_CHECKING:  # pragma: no cover
    from ..interrogator import Config
    from .sidecars import SidecarOptions

__all__ = ["RETRY_SETTINGS", "RetryPlan", "RetryRefused", "describe_run", "normalise_clip", "plan_retry", "read_run",
           "retry_outputs", "run_outputs", "run_path", "write_run"]

log = logging.getLogger(__name__)


def run_path(output: str | os.PathLike[str]) -> Path:
    """``FILE.failed.json`` beside the output: the run that wrote ``FILE.failed.txt``."""
    p = Path(output)
    return p.with_name(p.name + ".failed.json")


def normalise_clip(name: str) -> str:
    """A CLIP model name with a local folder made absolute (``local-dir:PATH``), to compare and store."""
    if name.startswith("local-dir:"):
        return "local-dir:" + _absolute(name[len("local-dir:"):])
    return name


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def describe_run(config: Config, settings: SearchSettings, caption: str | None,
                 fingerprint: str | None, outputs: dict[str, Any] | None = None,
                 caption_column: str | None = None) -> dict[str, Any]:
    """The run's settings and models, as the failure manifest keeps them (JSON types only); ``outputs``:
    its output options (``sidecar``, ``store_features``, ``store_scores``), which a retry takes too unless
    it is given its own; ``caption_column``: where its images' own captions came from (part of each
    input's key)."""
    return {"caption_column": caption_column, "outputs": dict(outputs or {}), "fingerprint": fingerprint,
            "settings": settings.to_dict(), "clip": [normalise_clip(n) for n in config.clip_models],
            "captioner": config.captioner,  # as given: its name is part of the fingerprint
            "vocab": [_absolute(v) for v in config.vocab], "caption": caption}


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
        tmp = temp_beside(path)
        with synced(tmp) as f:
            f.write((json.dumps(run, sort_keys=True, ensure_ascii=False, indent=1) + "\n").encode())
        os.replace(tmp, path)
    except OSError as err:
        log.warning("%s: cannot write the settings of the failed inputs (%s)", path, err.strerror or err)


def read_run(output: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run that wrote the output's failure manifest, or None (none kept: no failures, an
    earlier version, or a run that does not describe itself)."""
    path = run_path(output)
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        if not isinstance(err, FileNotFoundError):
            log.warning("%s: cannot read the settings of the failed inputs (%s)", path, err)
        return None
    return run if isinstance(run, dict) and isinstance(run.get("settings"), dict) else None


# --- the retry policy -----------------------------------------------------------------

#: The search settings a retry takes from the failed run, as the names :func:`plan_retry`'s
#: ``given`` and ``names`` use (``min_flavors`` and ``max_flavors`` are one: ``flavors``).
RETRY_SETTINGS = ("mode", "negative", "beam", "max_tokens", "chunks", "candidates", "min_flavors", "max_flavors",
                  "floor")


class RetryRefused(SettingsError):
    """A retry of failed inputs that cannot run as they ran: a setting or model given on the
    retry says otherwise, or the kept settings cannot be read. Its message is one line."""


@dataclass(frozen=True)
class RetryPlan:
    """What a retry of the failed inputs runs with: the failed run's settings, models and caption, and
    (``outputs``) the output options of that run the retry was not given, by name: ``sidecar``,
    ``on_existing``, ``prefix``, ``suffix``, ``dedupe``, ``store_features``, ``store_scores``."""

    settings: SearchSettings
    clip: list[str]
    captioner: str | None
    vocab: tuple[str, ...]
    caption: str | None
    outputs: dict[str, Any] = field(default_factory=dict)
    caption_column: str | None = None


def retry_outputs(run: Mapping[str, Any], given: Collection[str] = ()) -> dict[str, Any]:
    """The output options of a kept run that the retry was not given (``given`` wins): the
    caption files (``sidecar``: its extension, ``on_existing``, ``prefix``, ``suffix``,
    ``dedupe``), ``store_features`` and ``store_scores``."""
    kept: dict[str, Any] = run["outputs"] if isinstance(run.get("outputs"), dict) else {}
    side: dict[str, Any] | None = kept["sidecar"] if isinstance(kept.get("sidecar"), dict) else None
    out: dict[str, Any] = {}
    if side is not None and "sidecar" not in given:
        out.update(sidecar=side.get("ext"), on_existing=side.get("on_existing", "skip"), prefix=side.get("prefix"),
                   suffix=side.get("suffix"), dedupe=bool(side.get("dedupe")))
    out.update({k: kept[k] for k in ("store_features", "store_scores") if kept.get(k) is not None and k not in given})
    return out


def plan_retry(output: str | os.PathLike[str], settings: SearchSettings, *, clip: Sequence[str],
               captioner: str | None, vocab: Sequence[str] = (), caption: str | None = None,
               caption_column: str | None = None, low_vram: bool = False, given: Collection[str] = (),
               names: Mapping[str, str] | None = None) -> RetryPlan:
    """The retry of ``output``'s failed inputs: the settings and models they ran with (kept in
    ``FILE.failed.json``), not the retry's defaults, and the output options of that run.

    ``settings``, ``clip``, ``captioner`` (``"auto"``, a name or None), ``vocab`` and ``caption`` are the
    retry's own; ``given`` names those the user gave explicitly: any of :data:`RETRY_SETTINGS`, ``clip``,
    ``captioner``, ``caption``, ``caption_column``, ``vocab``, and the output options ``sidecar``,
    ``store_features``, ``store_scores`` (a given one is kept, not the run's). A given setting or model
    that differs from the run's raises :class:`RetryRefused`, one line naming each difference in the
    front end's words (``names``: ``{"mode": "--mode", ..., "flavors": "--flavors", "retry":
    "--retry-failed"}``; a name left out is shown as is). Without a kept run (an earlier version's
    manifest) the retry's own settings are returned, and the engine refuses them if no failed input
    ran with them.
    """
    def word(key: str) -> str:  # the front end's name for an option
        return (names or {}).get(key, key)

    run = read_run(output)
    if run is None:
        return RetryPlan(settings, list(clip), captioner, tuple(vocab), caption, caption_column=caption_column)
    try:
        stored = SearchSettings.from_dict(run["settings"])
    except (SettingsError, TypeError) as err:
        raise RetryRefused(f"{word('retry')}: cannot use the settings kept in {output}.failed.json ({one_line(err)}); "
                           f"retry with the options of that run, without {word('retry')}") from None

    from ..interrogator import Config  # no torch: the load-time settings only

    resolved = Config(caption_model=captioner, low_vram=low_vram).captioner  # "auto" is the model it picks
    stored_clip = [str(c) for c in run.get("clip") or []]
    stored_vocab = [str(v) for v in run.get("vocab") or []]
    stored_captioner, stored_caption, stored_column = run.get("captioner"), run.get("caption"), run.get("caption_column")
    # (the name ``given`` uses, the run's value, the retry's, whether they differ)
    checks: list[tuple[str, Any, Any, bool]] = [
        (n, getattr(stored, n), getattr(settings, n), getattr(settings, n) != getattr(stored, n)) for n in RETRY_SETTINGS]
    checks += [
        ("clip", stored_clip, list(clip), [normalise_clip(c) for c in clip] != stored_clip),
        ("captioner", stored_captioner or "none", captioner or "none", resolved != stored_captioner),
        ("caption", stored_caption, caption, caption != stored_caption),
        ("caption_column", stored_column, caption_column, caption_column != stored_column),
        ("vocab", stored_vocab, list(vocab), [_absolute(v) for v in vocab] != stored_vocab),
    ]
    differences: dict[str, None] = {}  # each once, in order
    for key, theirs, ours, differs in checks:
        if key in given and differs:
            if key.endswith("_flavors"):  # shown as one: --flavors MIN,MAX
                key, theirs = "flavors", f"{stored.min_flavors},{stored.max_flavors}"
                ours = f"{settings.min_flavors},{settings.max_flavors}"
            differences[f"{_shown(word(key), key, theirs)}, not {_shown(word(key), key, ours)}"] = None
    if differences:
        raise RetryRefused(f"{word('retry')}: the failed inputs of {output} ran with {'; '.join(differences)}; "
                           "leave those options out to retry them as they ran")
    return RetryPlan(stored, stored_clip, stored_captioner, tuple(stored_vocab), stored_caption,
                     retry_outputs(run, given), stored_column)


def _shown(word: str, key: str, value: Any) -> str:
    """A setting's value as a difference names it: ``--mode fast``, ``--flavors 8,32``, ``no --chunks``."""
    if isinstance(value, bool):
        return word if value else f"no {word}"
    if value is None:
        return f"{word} off" if key == "floor" else f"no {word}"
    if isinstance(value, (list, tuple)):
        return f"{word} {' '.join(str(v) for v in value)}" if value else f"no {word}"
    return f"{word} {value:g}" if isinstance(value, float) else f"{word} {value}"
