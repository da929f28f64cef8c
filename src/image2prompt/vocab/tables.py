"""Phrase tables: ordered, de-duplicated label lists with a content hash."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property


def labels_sha256(labels: Sequence[str]) -> str:
    """The reference's table hash: sha256 of the labels joined with ","."""
    return hashlib.sha256(",".join(labels).encode("utf-8")).hexdigest()


def clean_labels(lines: Iterable[str]) -> list[str]:
    """Strip each line, drop blanks and later duplicates, keep the first-seen order."""
    return list(dict.fromkeys(label for label in (line.strip() for line in lines) if label))


@dataclass(frozen=True)
class SourceLayout:
    """How a table maps onto the list the reference would have hashed for it.

    The reference keeps blank lines and duplicates, so its cache files (and the precomputed embeddings it publishes)
    are keyed by the raw list. Keeping the raw hash and the row of each of our labels in it lets us reuse those files.
    """

    sha256: str  # hash of the raw list, as the reference computes it
    size: int  # number of rows in a file keyed by that hash
    rows: tuple[int, ...]  # for each of our labels, its row in such a file


@dataclass(frozen=True)
class PhraseTable:
    """A named, ordered list of phrases, e.g. ``flavors`` or ``artists``.

    ``name`` names the table's cache file. ``canonical`` marks the reference's own lists (the classic pack, and the
    standard trendings table): their files keep the reference's names (``{model}_{name}.safetensors``), so caches
    written by clip-interrogator and the precomputed files it publishes are reused. Every other table's file name
    carries its label hash too, so several vocabularies that share a category name live side by side in one cache.
    """

    name: str
    labels: tuple[str, ...]
    source: SourceLayout | None = field(default=None, compare=False)
    canonical: bool = field(default=False, compare=False)

    @classmethod
    def from_lines(cls, name: str, lines: Iterable[str], *, canonical: bool = False) -> PhraseTable:
        raw = [line.strip() for line in lines]
        labels = clean_labels(raw)
        source = None
        if raw != labels:
            first_row: dict[str, int] = {}
            for i, label in enumerate(raw):
                first_row.setdefault(label, i)
            source = SourceLayout(labels_sha256(raw), len(raw), tuple(first_row[lab] for lab in labels))
        return cls(name, tuple(labels), source, canonical)

    @cached_property
    def sha256(self) -> str:
        return labels_sha256(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"PhraseTable({self.name!r}, {len(self.labels)} labels)"
