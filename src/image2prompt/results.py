"""Result objects: plain dataclasses that serialise to JSON (no torch here)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

MODES = ("best", "classic", "fast", "negative")


@dataclass
class Phrase:
    """One vocabulary phrase with its CLIP similarity to the image.

    ``hypothesis`` marks phrases that name a person (artists): CLIP similarity
    says the image resembles that name's training images, not who made it.
    """

    text: str
    category: str
    score: float
    hypothesis: bool = False


@dataclass
class Result:
    """What one interrogation produced. The prompt is a scaffold to refine, not a recovered prompt."""

    prompt: str
    mode: str
    caption: str | None
    similarity: float  # CLIP similarity of the final prompt to the image
    clip_model: str
    caption_model: str | None
    phrases: list[Phrase] = field(default_factory=list)
    source: str | None = None
    token_count: int | None = None  # text tokens in the prompt (start/end excluded)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)


@dataclass
class Analysis:
    """Top phrases of each category, with scores."""

    categories: dict[str, list[Phrase]]
    clip_model: str
    caption: str | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)
