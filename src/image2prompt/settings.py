"""Per-call search settings: frozen, hashable, validated when built (no torch here).

Load-time settings (models, device, precision, cache, vocabulary) live in :class:`image2prompt.Config`; everything a
single search may vary lives here and is passed per call, so one loaded :class:`~image2prompt.Interrogator` serves any
mix of modes and budgets. Each knob has one name in every layer: the CLI flag, this field and the search code use the
same word.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import SettingsError

#: The modes built into the package (plugins may register more, see image2prompt.modes).
BUILTIN_MODES = ("best", "classic", "fast", "negative", "turbo", "style", "caption")

#: The relevance floor's default, in units of the spread of the image's whole vocabulary (a phrase's support: its
#: margin over its category's median for the image, over the standard deviation of every phrase's score). Chosen on
#: the quality lab as the floor with the highest precision whose recall stays within 0.05 of the floor off: best
#: mode's precision 0.26 -> 0.39 for 0.02 of recall (docs/confidence.md). It is also the bar ``Result.specificity``
#: and ``analyze`` measure against when the floor is off.
DEFAULT_FLOOR = 0.75

#: The relevance floor's bounds (inclusive), in the same units. A phrase's support over a real vocabulary stays within
#: a few units (the best of 100k normal scores stands about 4.4 above their median; the floors measured in
#: docs/confidence.md are 0.5 to 1.5), so a floor past +10 keeps out every phrase (an empty prompt in the modes with
#: no caption) and one under -10 keeps out none (as ``off`` does, which says so plainly). A floor outside them is a
#: mistake, say ``1e308`` for ``1.0``: an error rather than an empty prompt.
FLOOR_RANGE = (-10.0, 10.0)

#: min_flavors's default: capped by a smaller max_flavors (``max_flavors=4`` alone is a 4-step
#: chain); a min_flavors set to anything else must not exceed max_flavors.
DEFAULT_MIN_FLAVORS = 8

#: Text tokens per chunk when a long prompt is split (A1111's BREAK, ComfyUI's concat):
#: one 77-token window less its start and end tokens.
CHUNK_TOKENS = 75


@dataclass(frozen=True)
class SearchSettings:
    """How one search runs. Every field has a working default (the reference's best mode).

    A field that front ends offer as an option carries its description in ``metadata["help"]``
    (the command line's ``--help`` takes it, and its default, from here: one definition).
    """

    mode: str = field(default="best", metadata={"help": (
        "best: greedy search for the highest-scoring prompt (slowest); turbo: the same search, done lazily on a "
        "shortlist of phrases at each step (several times faster); classic: caption, medium, artist, site, "
        "movement and 3 flavors; fast: caption and the top phrases; negative: phrases least like the image, for a "
        "negative prompt; style: only the aesthetic (lighting, colour, medium, technique...), no caption or "
        "subject; caption: the captioner's text alone, cut to the budget (training captions from a VLM).")})
    candidates: int = field(default=2048, metadata={"help": (  # best/negative/style: the candidate pool
        "best, negative and style: how many of the best-scoring phrases the search tries (turbo: at most 1024). "
        "Every search step scores each one, so best mode's time grows about in proportion: 512 is about 4x "
        "faster on a CPU and finds slightly weaker prompts.")})
    min_flavors: int = field(default=DEFAULT_MIN_FLAVORS, metadata={"help": (  # the default: capped by max_flavors
        "Phrases a search adds: at least this many steps.")})
    max_flavors: int = field(default=32, metadata={"help": (
        "Phrases a search adds: at most this many steps (fast mode adds this many).")})
    classic_flavors: int = 3  # flavors in classic mode
    max_tokens: int = field(default=77, metadata={"help": (
        "Token budget of the prompt, start and end tokens included; no mode goes over it, and a caption over it "
        "is cut at a word. Past 77, CLIP cannot score additions: the rest is filled in order of the phrases' "
        "own scores.")})
    beam: int = field(default=1, metadata={"help": (
        "best/turbo: prompts kept per search step (1 is the reference's greedy search); the other modes have "
        "no beam.")})
    turbo_pool: int = 1024  # turbo: candidate pool size (at most `candidates`)
    keep: int | None = None  # turbo: after the first step keep only this many phrases, highest gain first
    shortlist: int = 48  # turbo: phrases scored per lazy round, highest mean past gain first
    max_rounds: int = 2  # turbo: at most this many lazy rounds per chain step
    refresh_every: int = 16  # turbo: rescore the whole pool every this many steps (0: only the first)
    style_phrases: int = 12  # style: at most this many phrases
    chunks: bool = field(default=False, metadata={"help": (
        f"Split long prompts into {CHUNK_TOKENS}-token chunks joined with BREAK (A1111/ComfyUI style).")})
    negative: bool = field(default=False, metadata={"help": (
        "Also write the paired negative prompt, from the same image features.")})
    score_prompt: bool = True  # fast/classic: compute Result.similarity (one text encode per image)
    floor: float | None = field(default=DEFAULT_FLOOR, metadata={"help": (  # None: off, the reference
        "Relevance floor: a phrase enters the prompt only if the image supports it on its own: its score "
        "stands Z above its category's median for this image, in standard deviations of the image's scores "
        "over the whole vocabulary (negative mode: below). off: the reference's behaviour, for parity.")})
    weak_z: float = 4.0  # weak match below this z of the best flavor, for a 100k table; scaled to other sizes
    trace: bool = False  # record each chain step and the top phrases per category (Result.trace)
    trace_top: int = 10  # phrases per category in the trace

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise SettingsError("invalid search settings: " + "; ".join(problems))

    @classmethod
    def reference(cls, **changes: Any) -> SearchSettings:
        """The reference clip-interrogator's behaviour: these defaults with every departure from
        it turned off (today the relevance floor), so its modes give its prompts. ``changes``
        apply on top, e.g. ``SearchSettings.reference(mode="fast")``."""
        return cls(**{"floor": None, **changes})

    # -- conversion ----------------------------------------------------------------
    def replace(self, **changes: Any) -> SearchSettings:
        """A copy with ``changes`` applied (validated like any new instance)."""
        self._check_known(changes)
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSettings:
        """Settings from a mapping (a JSON body, a stored record); unknown keys are an error."""
        cls._check_known(data)
        return cls(**data)

    @classmethod
    def _check_known(cls, names: Iterable[str]) -> None:
        unknown = sorted(set(names) - {f.name for f in fields(cls)})
        if unknown:
            raise SettingsError(f"unknown search setting(s): {', '.join(unknown)}")

    def digest(self) -> str:
        """A short, stable hash of these settings alone (see Interrogator.fingerprint)."""
        return stable_hash(self.to_dict())


#: Bumped whenever a change of this package changes what a search returns for the same
#: settings, models and vocabulary; it is part of every fingerprint, so resumed runs redo the work.
SEARCH_REVISION = 4  # 3: the relevance floor reads support (margin over the vocabulary's spread), not z
# 4: QuickGELU-trained ARCH/TAG models (ViT-L-14/openai...) are built with QuickGELU (open_clip >= 2.29 builds GELU)


def parse_floor(text: str) -> float | None:
    """A relevance floor as front ends take it: a finite number, or ``off`` (``none``) for
    None. Anything else is a :class:`SettingsError` naming the value."""
    value = str(text).strip().lower()
    if value in ("off", "none"):
        return None
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(f"floor {text!r}: give a number of standard deviations, e.g. 0.75, or off") from None
    if number != number or abs(number) == float("inf"):
        raise SettingsError(f"floor {text!r}: give a finite number, or off")
    if not _floor_in_range(number):
        raise SettingsError(f"floor {text!r}: give a number from {FLOOR_RANGE[0]:g} to {FLOOR_RANGE[1]:g} "
                            f"(the default is {DEFAULT_FLOOR:g}), or off")
    return number


def _floor_in_range(value: float) -> bool:
    return FLOOR_RANGE[0] <= value <= FLOOR_RANGE[1]


def search_fingerprint(settings: SearchSettings, *, clip: Sequence[str], captioner: str | None,
                       vocab: Mapping[str, str]) -> str:
    """The resume and micro-batch key: the settings with the encoders' cache keys, the captioner's
    name and each vocabulary table's hash (``{name: sha256}``). The one definition of it:
    :meth:`Interrogator.fingerprint` and the batch engine's prediction both call this."""
    return stable_hash({"revision": SEARCH_REVISION, "settings": settings.to_dict(), "clip": list(clip),
                        "captioner": captioner, "vocab": dict(vocab)})


def stable_hash(data: Any, length: int = 16) -> str:
    """sha256 of canonical JSON (sorted keys, no spaces), cut to ``length`` hex digits."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _problems(s: SearchSettings) -> list[str]:
    out: list[str] = []
    if not isinstance(s.mode, str) or not s.mode:
        out.append(f"mode must be a mode name, got {s.mode!r}")
    ints = {"candidates": 1, "min_flavors": 0, "max_flavors": 0, "classic_flavors": 0, "max_tokens": 3,
            "beam": 1, "turbo_pool": 1, "shortlist": 1, "max_rounds": 1, "refresh_every": 0,
            "style_phrases": 1, "trace_top": 1}
    for name, low in ints.items():
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, int):
            out.append(f"{name} must be an integer, got {value!r}")
        elif value < low:
            out.append(f"{name} must be at least {low}, got {value}")
    if s.keep is not None and (isinstance(s.keep, bool) or not isinstance(s.keep, int) or s.keep < 1):
        out.append(f"keep must be a positive integer or None, got {s.keep!r}")
    for name in ("chunks", "negative", "score_prompt", "trace"):
        if not isinstance(getattr(s, name), bool):
            out.append(f"{name} must be true or false, got {getattr(s, name)!r}")
    if s.floor is not None and (isinstance(s.floor, bool) or not isinstance(s.floor, (int, float))
                                or s.floor != s.floor or abs(s.floor) == float("inf")):
        out.append(f"floor must be a number or None (off), got {s.floor!r}")
    elif s.floor is not None and not _floor_in_range(s.floor):
        out.append(f"floor must be from {FLOOR_RANGE[0]:g} to {FLOOR_RANGE[1]:g} standard deviations (a floor "
                   f"past them keeps out every phrase or none), or None (off), got {s.floor!r}")
    counts = (s.min_flavors, s.max_flavors)
    if all(isinstance(n, int) and not isinstance(n, bool) for n in counts) \
            and s.min_flavors > s.max_flavors and s.min_flavors != DEFAULT_MIN_FLAVORS:
        out.append(f"min_flavors ({s.min_flavors}) must not exceed max_flavors ({s.max_flavors})")
    if isinstance(s.weak_z, bool) or not isinstance(s.weak_z, (int, float)):
        out.append(f"weak_z must be a number, got {s.weak_z!r}")
    return out
