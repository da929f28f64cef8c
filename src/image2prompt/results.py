"""Result objects: plain dataclasses that serialise to JSON (no torch here)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .settings import BUILTIN_MODES as MODES  # noqa: F401  (the built-in mode names, kept here for callers)


class _Serialisable:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  # every subclass is a dataclass

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)


@dataclass
class Phrase:
    """One vocabulary phrase with its CLIP similarity to the image.

    ``hypothesis`` marks phrases that name a person (artists): CLIP similarity
    says the image resembles that name's training images, not who made it.
    """

    text: str
    category: str
    score: float  # CLIP similarity of the phrase alone to the image
    hypothesis: bool = False
    margin: float | None = None  # score minus the median score of its category for this image
    z: float | None = None  # margin over its category's standard deviation (the emphasis weight reads it)
    support: float | None = None  # margin over the spread of the image's whole vocabulary: what the relevance floor reads
    weight: float = 1.0  # A1111-style emphasis derived from the margin (see docs/confidence.md)


@dataclass
class TraceStep:
    """One chain step: the phrase it added and the prompt's similarity after it."""

    phrase: str
    similarity: float


@dataclass
class Trace:
    """How a prompt was found (``SearchSettings(trace=True)``), for studies of a collection."""

    steps: list[TraceStep] = field(default_factory=list)  # the returned chain's steps, in order
    picked: str | None = None  # best mode: which candidate won (caption, classic, fast or chain)
    top: dict[str, list[Phrase]] = field(default_factory=dict)  # top phrases per category, with scores


@dataclass
class Result(_Serialisable):
    """What one interrogation produced. The prompt is a scaffold to refine, not a recovered prompt."""

    prompt: str
    mode: str
    caption: str | None
    similarity: float | None  # CLIP similarity of the final prompt to the image (None: not scored)
    clip_model: str
    caption_model: str | None
    caption_truncated: bool = False  # the caption alone was over the token budget and was cut at a word
    phrases: list[Phrase] = field(default_factory=list)
    source: str | None = None
    token_count: int | None = None  # text tokens in the prompt (start/end excluded)
    match_strength: float | None = None  # how far the best flavor stands out: z-score in its table
    weak_match: bool = False  # True when match_strength is low: treat every phrase with suspicion
    specificity: float | None = None  # share of the phrases that clear the relevance floor (None: no phrases)
    rejected: list[Phrase] = field(default_factory=list)  # what the floor kept out that would have been used
    negative: Result | None = None  # the paired negative prompt, when asked for
    chunks: list[str] | None = None  # the prompt split into <=75-token chunks, when asked for
    fingerprint: str | None = None  # settings + models + vocabulary (Interrogator.fingerprint): a resume key
    version: str | None = None  # the image2prompt version that produced it
    trace: Trace | None = None  # with SearchSettings(trace=True): how the prompt was found


@dataclass
class Analysis(_Serialisable):
    """Top phrases of each category, with scores."""

    categories: dict[str, list[Phrase]]
    clip_model: str
    caption: str | None = None
    source: str | None = None
    match_strength: float | None = None  # as in Result: how far the best flavor stands out
    weak_match: bool = False  # as in Result: no phrase stands out, treat every one with suspicion
    floor: float | None = None  # the relevance floor phrases are marked against (Phrase.support below it: weak)
