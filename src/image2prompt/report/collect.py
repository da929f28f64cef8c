"""One streaming pass over batch records: counts, score samples and bounded samples of images.

Memory is bounded by the vocabulary, not the collection: per phrase, counts per group
and a fixed-size reservoir of scores; per image, only the ids of its prompt's phrases
(4 bytes each, for co-occurrence). Images for thumbnails and map points are reservoir
samples of a fixed size.
"""

from __future__ import annotations

import json
import random
import re
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from ..errors import SettingsError

__all__ = ["Collection", "ImageRef", "PhraseStats", "Selection", "grouper"]

#: Scores kept per phrase for its distribution (a uniform sample of every score seen).
RESERVOIR = 128
UNGROUPED = "all images"


@dataclass
class PhraseStats:
    """One phrase of one category, over the collection."""

    category: str
    text: str
    hypothesis: bool = False
    top: dict[str, int] = field(default_factory=dict)  # group -> images with it among their top phrases
    prompt: dict[str, int] = field(default_factory=dict)  # group -> images with it in their prompt
    n_scores: int = 0
    sum: float = 0.0
    sample: array = field(default_factory=lambda: array("f"))  # a reservoir of its scores
    #: group -> [scores seen, their sum]: a group's own mean, to rank its phrases by its own images
    group_scores: dict[str, list[float]] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return self.sum / self.n_scores if self.n_scores else float("nan")

    def group_mean(self, group: str) -> float:
        n, total = self.group_scores.get(group, (0, 0.0))
        return total / n if n else float("nan")

    def images(self, where: str = "top") -> int:
        return sum((self.top if where == "top" else self.prompt).values())


@dataclass
class ImageRef:
    """A sampled image: enough to find its thumbnail and its features later."""

    source: str
    content_hash: str | None
    group: str
    label: str | None  # its best medium (or first category's best phrase)


def grouper(spec: str | None) -> Callable[[dict[str, Any]], str]:
    """``folder``, ``column:NAME`` (a record or result field), ``regex:PATTERN`` (its first group,
    or the whole match, on the source), or None (one group)."""
    if spec is None or not spec.strip():
        return lambda record: UNGROUPED
    kind, _, arg = spec.strip().partition(":")
    if kind == "folder" and not arg:
        def by_folder(record: dict[str, Any]) -> str:
            parent = str(PurePosixPath(str(record.get("source", "")).replace("\\", "/")).parent)
            return parent if parent not in ("", ".") else "(top folder)"
        return by_folder
    if kind == "column" and arg:
        def by_column(record: dict[str, Any]) -> str:
            value = record.get(arg)
            if value is None and isinstance(record.get("result"), dict):
                value = record["result"].get(arg)
            return "(none)" if value is None or value == "" else str(value)
        return by_column
    if kind == "regex" and arg:
        try:
            pattern = re.compile(arg)
        except re.error as err:
            raise SettingsError(f"--group-by regex:{arg}: not a valid regular expression ({err})") from None

        def by_regex(record: dict[str, Any]) -> str:
            m = pattern.search(str(record.get("source", "")))
            if m is None:
                return "(no match)"
            return next((g for g in m.groups() if g is not None), m.group(0))
        return by_regex
    raise SettingsError(f"--group-by {spec!r}: use folder, column:NAME or regex:PATTERN")


def _result(record: dict[str, Any]) -> dict[str, Any] | None:
    """The record's result, nested (JSONL) or rebuilt from flat columns (CSV, Parquet)."""
    res = record.get("result")
    if isinstance(res, dict):
        return res
    if not record.get("ok") or "prompt" not in record:
        return None
    out = {k: record.get(k) for k in ("prompt", "mode", "caption", "similarity", "weak_match", "clip_model",
                                      "caption_model")}
    for key in ("phrases", "trace"):
        value = record.get(key)
        out[key] = json.loads(value) if isinstance(value, str) and value else value
    return out


class Collection:
    """Everything the report needs, gathered from records one at a time (:meth:`add`)."""

    def __init__(self, group_by: str | None = None, *, points: int = 2000, thumbnails: int = 48,
                 seed: int = 0) -> None:
        self.group_of = grouper(group_by)
        self.rng = random.Random(seed)
        self._random = self.rng.random
        self.phrases: dict[tuple[str, str], PhraseStats] = {}
        self.groups: dict[str, int] = {}  # group -> ok images
        #: group -> images whose top phrases are known (--store-scores): the base of every share of
        #: "top" counts, so a collection that mixes runs with and without scores compares like with like
        self.scored_groups: dict[str, int] = {}
        self.errors = 0
        self.records = 0
        self.weak = 0
        self.weak_by_group: dict[str, int] = {}
        self.with_scores = 0  # images whose record has the top phrases per category (--store-scores)
        self.models: dict[str, int] = {}
        self.modes: dict[str, int] = {}
        self.fingerprints: dict[str, int] = {}
        #: category -> K, the longest stored top list (--store-scores K): at least the category's
        #: phrases and every image lists them all, so their shares rank nothing
        self.top_k: dict[str, int] = {}
        self.prompt_ids = array("i")  # the ids of each image's prompt phrases, image after image
        self.prompt_ends = array("q")
        self._ids: dict[tuple[str, str], int] = {}
        self.id_keys: list[tuple[str, str]] = []
        self._points = _Reservoir(points, self.rng)
        self._weak_sample = _Reservoir(thumbnails, self.rng)

    # -- reading ---------------------------------------------------------------------------
    def add_all(self, records: Iterable[dict[str, Any]]) -> Collection:
        for record in records:
            self.add(record)
        return self

    def add(self, record: dict[str, Any]) -> None:
        self.records += 1
        res = _result(record) if record.get("ok") else None
        if res is None:
            self.errors += 1
            return
        group = self.group_of(record)
        self.groups[group] = self.groups.get(group, 0) + 1
        _bump(self.models, str(res.get("clip_model")))
        _bump(self.modes, str(res.get("mode")))
        _bump(self.fingerprints, str(record.get("fingerprint")))
        trace = res.get("trace") if isinstance(res.get("trace"), dict) else None
        top = trace.get("top") if trace else None
        label = None
        if isinstance(top, dict) and top:
            self.with_scores += 1
            self.scored_groups[group] = self.scored_groups.get(group, 0) + 1
            for category, phrases in top.items():
                for p in phrases or ():
                    stats = self._stats(category, p)
                    stats.top[group] = stats.top.get(group, 0) + 1
                    self._score(stats, p.get("score"), group)
                if phrases and len(phrases) > self.top_k.get(category, 0):
                    self.top_k[category] = len(phrases)
            best = top.get("mediums") or next(iter(top.values()))
            label = best[0]["text"] if best else None
        ids = self.prompt_ids
        for p in res.get("phrases") or ():
            stats = self._stats(p.get("category", "?"), p)
            stats.prompt[group] = stats.prompt.get(group, 0) + 1
            if not top:  # no stored top phrases: the prompt's phrases are all that is known of its scores
                self._score(stats, p.get("score"), group)
            ids.append(self._ids[(stats.category, stats.text)])
        self.prompt_ends.append(len(ids))
        ref = ImageRef(str(record.get("source", "")), record.get("content_hash"), group, label)
        if res.get("weak_match"):
            self.weak += 1
            self.weak_by_group[group] = self.weak_by_group.get(group, 0) + 1
            self._weak_sample.offer(ref)
        self._points.offer(ref)

    def _stats(self, category: str, p: dict[str, Any]) -> PhraseStats:
        key = (category, str(p.get("text", "")))
        stats = self.phrases.get(key)
        if stats is None:
            stats = self.phrases[key] = PhraseStats(category, key[1], bool(p.get("hypothesis")))
            self._ids[key] = len(self.id_keys)
            self.id_keys.append(key)
        return stats

    def _score(self, stats: PhraseStats, score: Any, group: str) -> None:
        if not isinstance(score, (int, float)):
            return
        stats.n_scores += 1
        stats.sum += float(score)
        mine = stats.group_scores.setdefault(group, [0, 0.0])
        mine[0] += 1
        mine[1] += float(score)
        if len(stats.sample) < RESERVOIR:
            stats.sample.append(float(score))
        else:
            j = int(self._random() * stats.n_scores)  # uniform in [0, n): randrange's draw, at a fifth of its cost
            if j < RESERVOIR:
                stats.sample[j] = float(score)

    def finish(self) -> None:
        """After the last record: with no stored top phrases at all, the prompts' phrases stand in for them."""
        if self.with_scores == 0:
            for stats in self.phrases.values():
                stats.top = dict(stats.prompt)
            self.scored_groups = dict(self.groups)

    @property
    def scored(self) -> int:
        """Images whose "top" phrases the shares are taken over."""
        return sum(self.scored_groups.values())

    def shorten_folders(self) -> None:
        """Name folder groups by what tells them apart: ``/data/set/cool`` and ``/data/set/warm``
        become ``cool`` and ``warm`` (their common parent dropped)."""
        names = [g for g in self.groups if not g.startswith("(")]
        if len(names) < 2:
            return
        parts = [PurePosixPath(g).parts for g in names]
        common = 0
        while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
            common += 1
        if common:
            self.rename({g: str(PurePosixPath(*p[common:])) for g, p in zip(names, parts)})

    def rename(self, mapping: dict[str, str]) -> None:
        def moved(counts: dict[str, int]) -> dict[str, int]:
            return {mapping.get(g, g): k for g, k in counts.items()}

        self.groups, self.weak_by_group = moved(self.groups), moved(self.weak_by_group)
        self.scored_groups = moved(self.scored_groups)
        for stats in self.phrases.values():
            stats.top, stats.prompt = moved(stats.top), moved(stats.prompt)
            stats.group_scores = {mapping.get(g, g): v for g, v in stats.group_scores.items()}
        for ref in self._points.items + self._weak_sample.items:
            ref.group = mapping.get(ref.group, ref.group)

    # -- what was gathered ---------------------------------------------------------------------
    @property
    def images(self) -> int:
        return sum(self.groups.values())

    @property
    def points(self) -> list[ImageRef]:
        return self._points.items

    @property
    def weak_sample(self) -> list[ImageRef]:
        return self._weak_sample.items

    def categories(self) -> list[str]:
        return list(dict.fromkeys(category for category, _ in self.phrases))


class Selection:
    """Which records the report counts: one per image, the latest, and what that leaves out.

    ``batch`` appends a record per image each time its settings fingerprint changes; counting them
    all would count each image several times, as if the copies were independent images. One record
    per source (and group: with ``--group-by column:NAME`` two runs of the same images can still be
    compared) is counted: the last with a result, in the order given, or where none has one the
    last error. ``fingerprints`` (prefixes) count only those fingerprints' records.

    The first pass offers every record (:meth:`offer`, 17 bytes each), :meth:`finish` decides, and
    :attr:`keep` then says, record by record of those :meth:`wants` in the same order, which to count.
    """

    def __init__(self, group_of: Callable[[dict[str, Any]], str], fingerprints: Iterable[str] = ()) -> None:
        self.group_of = group_of
        self.wanted = tuple(f.strip() for f in fingerprints if f and f.strip())
        self.records = 0  # every record read
        self.seen: dict[str, int] = {}  # fingerprint -> records
        self.other_fingerprints = 0  # records the fingerprint filter left out
        self.repeats = 0  # earlier records of an image that has a later one
        self.keep = np.zeros(0, bool)
        self._source = array("q")
        self._key = array("q")
        self._ok = bytearray()

    def wants(self, record: dict[str, Any]) -> bool:
        """False for a record of a fingerprint the filter leaves out."""
        if not self.wanted:
            return True
        fp = str(record.get("fingerprint") or "")
        return any(fp.startswith(w) for w in self.wanted)

    def offer(self, record: dict[str, Any]) -> bool:
        """Note a record of the first pass; False when the fingerprint filter leaves it out."""
        self.records += 1
        fp = str(record.get("fingerprint") or "")
        self.seen[fp] = self.seen.get(fp, 0) + 1
        if not self.wants(record):
            self.other_fingerprints += 1
            return False
        source = str(record.get("source") or "")
        ok = bool(record.get("ok")) and (isinstance(record.get("result"), dict) or "prompt" in record)
        self._source.append(hash(source))
        self._key.append(hash((source, self.group_of(record))) if ok else 0)
        self._ok.append(ok)
        return True

    def finish(self) -> Selection:
        ok = np.frombuffer(bytes(self._ok), np.uint8).astype(bool)
        source = np.frombuffer(self._source, np.int64)
        key = np.frombuffer(self._key, np.int64)
        keep = np.zeros(ok.size, bool)
        results = np.flatnonzero(ok)[::-1]  # latest first: np.unique's first index is the latest record
        if results.size:
            keep[results[np.unique(key[results], return_index=True)[1]]] = True
        errors = np.flatnonzero(~ok)[::-1]
        if errors.size:
            last = errors[np.unique(source[errors], return_index=True)[1]]
            keep[last[~np.isin(source[last], source[results])]] = True  # an image with a result is no error
        self.keep = keep
        self.repeats = int(ok.size - keep.sum())
        return self

    def left_out(self) -> str | None:
        """One sentence on the records not counted, or None."""
        parts = []
        if self.repeats:
            parts.append(f"{self.repeats} earlier record{'s' if self.repeats != 1 else ''} of the same images "
                         "(under other settings fingerprints, or earlier tries), as only the latest record of "
                         "each image is counted")
        if self.other_fingerprints:
            parts.append(f"{self.other_fingerprints} record{'s' if self.other_fingerprints != 1 else ''} of "
                         f"other fingerprints (--fingerprint {' '.join(self.wanted)})")
        if not parts:
            return None
        hint = ""
        if self.repeats and not self.wanted and len(self.seen) > 1:
            hint = "; --fingerprint FP counts one run's records only (" + ", ".join(
                f"{fp or '(none)'}: {k}" for fp, k in sorted(self.seen.items(), key=lambda kv: -kv[1])[:6]) + ")"
        return f"Left out {' and '.join(parts)}{hint}."


class _Reservoir:
    def __init__(self, size: int, rng: random.Random) -> None:
        self.size, self.rng, self.seen = max(0, size), rng, 0
        self.items: list[Any] = []

    def offer(self, item: Any) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
        elif self.size:
            j = self.rng.randrange(self.seen)
            if j < self.size:
                self.items[j] = item


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1
