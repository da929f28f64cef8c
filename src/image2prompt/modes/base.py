"""The mode interface: what a mode is given, and what it hands back (no torch here).

A mode turns a batch of :class:`~image2prompt.features.Features` into one :class:`Task` per image. A task holds the
chains it wants advanced (the orchestrator advances every chain of every image in lockstep, so their extensions share
encoder batches) and a ``finish`` callback that, once those chains are done, gives an :class:`Outcome`: one or more
candidate prompts. When the outcome asks for it, the orchestrator scores the candidates of every task that finished in
the same round in one text batch and keeps the most similar.

Everything a mode may compute with is on :class:`SearchContext`: table scores, top-k, token budgets, text similarity.
A mode never touches a model directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..features import Features
from ..index import MergedView, VocabularyIndex
from ..prompt import at_limit, cut_caption_to_fit, fits, split_into_chunks, truncate_to_fit
from ..prompt.overlap import clauses, content_words, says
from ..results import Phrase, TraceStep
from ..search import ChainState, category_stats, pooled_spread, similarities, start_chain, top_k_of_scores, weak_match
from ..settings import CHUNK_TOKENS, SearchSettings
from ..vocab import HYPOTHESIS_CATEGORIES, VocabularyPack

if TYPE_CHECKING:  # pragma: no cover
    from ..interrogator import Interrogator


@dataclass
class Scored:
    """A candidate prompt and the phrases it holds (after the caption, in order)."""

    prompt: str
    phrases: list[Phrase] = field(default_factory=list)
    name: str = ""  # which kind of candidate it is (best mode's caption/classic/fast/chain), for traces
    rejected: list[Phrase] = field(default_factory=list)  # what the relevance floor kept out of it


@dataclass
class Chain:
    """A chain to advance, with the features it is scored against and the indexes its
    phrases come from (for their token ids)."""

    features: Features
    state: ChainState
    indexes: Sequence[VocabularyIndex]


@dataclass
class Outcome:
    """What a finished task gives: the candidates, and whether to score them.

    With ``score`` the orchestrator computes each candidate's similarity to the image and keeps the highest (ties: the
    earlier one); otherwise the single candidate is kept with ``similarity`` as given (None: not scored).
    """

    candidates: list[Scored]
    similarity: float | None = None
    score: bool = False
    steps: list[TraceStep] = field(default_factory=list)  # the chain behind the prompt, for traces


@dataclass
class Task:
    """One image's work in one mode."""

    chains: list[Chain]
    finish: Callable[[], Outcome]

    @property
    def done(self) -> bool:
        return all(c.state.done for c in self.chains)


class Mode(Protocol):
    """A search mode. Register one with :func:`image2prompt.modes.register_mode`."""

    name: str
    #: Whether results carry the caption (False: negative mode writes no caption).
    uses_caption: bool

    def needs_caption(self, has_captioner: bool) -> bool:
        """Whether the images must be captioned before this mode can run."""

    def plan(self, ctx: SearchContext, batch: Sequence[Features]) -> list[Task]:
        """One task per image, in order."""


class OnePromptMode:
    """A mode that builds one prompt per image from table scores alone, with no chain
    (classic, fast): subclasses give ``name`` and ``candidate()``."""

    name = ""
    uses_caption = True

    def needs_caption(self, has_captioner: bool) -> bool:
        return True

    def candidate(self, ctx: SearchContext, feats: Features) -> Scored:
        raise NotImplementedError

    def plan(self, ctx: SearchContext, batch: Sequence[Features]) -> list[Task]:
        # each image's candidate is computed now, once, and scored (in one text batch) only where it is shown
        return [Task([], partial(Outcome, [self.candidate(ctx, f)], score=ctx.settings.score_prompt)) for f in batch]


class SearchContext:
    """The scoring tools of one search call: the loaded encoders and tables, and the settings.

    Table scores are memoised per image for the length of the call (a mode and its
    confidence figures need the same scores several times), then dropped.
    """

    def __init__(self, interrogator: Interrogator, settings: SearchSettings) -> None:
        self._owner = interrogator
        self.settings = settings
        self.clips = interrogator.clips
        self.indexes: list[VocabularyIndex] = interrogator.indexes
        self.vocab: VocabularyPack = interrogator.vocab
        self._memo: dict[int, tuple[Features, dict[Any, Any]]] = {}

    # -- tokens and budgets ----------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return max(c.count_tokens(text) for c in self.clips)

    def fits(self, text: str) -> bool:
        return all(fits(text, c.count_tokens, self.settings.max_tokens) for c in self.clips)

    def at_limit(self, text: str) -> bool:
        return any(at_limit(text, c.count_tokens, self.settings.max_tokens) for c in self.clips)

    def truncate(self, text: str) -> str:
        return truncate_to_fit(text, self.count_tokens, self.settings.max_tokens)

    def fit_caption(self, caption: str) -> str:
        """The caption cut to the token budget where a sentence or clause ends (unchanged when it fits)."""
        return cut_caption_to_fit(caption, self.count_tokens, self.settings.max_tokens)

    @property
    def window(self) -> int:
        """The encoders' context window (77 for every Stable Diffusion text encoder)."""
        return min(c.context_length for c in self.clips)

    def chunks(self, prompt: str) -> list[str]:
        return split_into_chunks(prompt, self.count_tokens, CHUNK_TOKENS)

    # -- scores --------------------------------------------------------------------------
    def memo(self, feats: Features) -> dict[Any, Any]:
        return self._memo.setdefault(id(feats), (feats, {}))[1]  # the features are held so the id stays theirs

    def table_scores(self, category: str, feats: Features,
                     indexes: Sequence[VocabularyIndex] | None = None) -> np.ndarray:
        """Mean over encoders of each label's similarity to the image."""
        indexes = indexes or self.indexes
        memo = self.memo(feats)
        key = (category, id(indexes))
        if key in memo:
            return memo[key]
        each = [similarities(f, index.embeds(category)).astype(np.float64) for index, f in zip(indexes, feats)]
        memo[key] = (sum(each[1:], each[0]) / len(self.clips)).astype(np.float32)
        return memo[key]

    def merged_scores(self, feats: Features) -> tuple[MergedView, np.ndarray]:
        view = self.indexes[0].merged()
        cats = self.vocab.merged_categories()
        every = np.concatenate([self.table_scores(c, feats) for c in cats]) if cats else np.empty(0, np.float32)
        return view, every[view.rows]

    def top(self, category: str, feats: Features, k: int, *, largest: bool = True, floored: bool = False) -> list[Phrase]:
        """The ``k`` best phrases of a table (``largest=False``: the worst); with ``floored``, only
        those that clear the relevance floor (mirrored for the worst), and none that a chat
        captioner's caption already says (:meth:`said`)."""
        scores = self.table_scores(category, feats)
        if floored and self.settings.floor is not None:
            scores, k = self._floored(scores, self.table_support(category, feats), k, largest)
        dedupe = floored and largest and self.dedupes(feats)
        s, idx = top_k_of_scores(scores, 2 * k + 16 if dedupe else k, largest=largest)
        labels = self.vocab[category].labels
        if dedupe:
            keep = ~self.said(feats, [labels[i] for i in idx], [index.embeds(category)[idx] for index in self.indexes])
            s, idx = s[keep][:k], idx[keep][:k]
        return [phrase(labels[i], category, float(v)) for v, i in zip(s, idx)]

    def top_merged(self, feats: Features, k: int, *, floored: bool = False) -> list[Phrase]:
        """The ``k`` best phrases of the merged table; with ``floored``, only those that clear
        the relevance floor (fewer than ``k`` when fewer clear it)."""
        view, scores = self.merged_scores(feats)
        if floored and self.settings.floor is not None:
            cats = self.vocab.merged_categories()  # laid out as merged_scores lays out the scores
            support = np.concatenate([self.table_support(c, feats) for c in cats])[view.rows]
            scores, k = self._floored(scores, support, k, largest=True)
        dedupe = floored and self.dedupes(feats)
        s, idx = top_k_of_scores(scores, 2 * k + 16 if dedupe else k)
        if dedupe:
            keep = ~self.said(feats, [view.labels[i] for i in idx], self._merged_embeds(view, idx))
            s, idx = s[keep][:k], idx[keep][:k]
        return [phrase(view.labels[i], view.categories[i], float(v)) for v, i in zip(s, idx)]

    # -- what the caption already says -------------------------------------------------
    #: A phrase whose text embedding is this close (cosine, mean over encoders) to a clause of the
    #: caption says the same in other words. Text-to-text similarities of CLIP run high; 0.9 keeps
    #: paraphrases out and related but different phrases in (not tunable on random weights).
    SAID_SIMILARITY = 0.9

    def dedupes(self, feats: Features) -> bool:
        """Whether phrases the caption already says are kept out: for a chat captioner's caption
        (a VLM's long descriptions name media and styles themselves). A typed caption, or a BLIP
        caption, is searched as it always was."""
        owner = self._owner
        return bool(feats.caption) and bool(getattr(owner.captioner, "chat", False)) \
            and feats.caption_model is not None and feats.caption_model == owner.caption_name

    def said(self, feats: Features, labels: Sequence[str], embeds: Sequence[np.ndarray]) -> np.ndarray:
        """Which of ``labels`` (with their embeddings, one matrix per encoder) the caption already says:
        every content word in the caption, or a text embedding within :attr:`SAID_SIMILARITY` of one
        of its clauses."""
        memo = self.memo(feats)
        if "said" not in memo:
            caption = feats.caption or ""
            parts = clauses(caption)
            vectors = [self.text_vectors(c) for c in parts]  # [clause][encoder]
            memo["said"] = (content_words(caption),
                            [np.stack([v[e] for v in vectors]) for e in range(len(self.clips))] if vectors else None)
        words, clause_vectors = memo["said"]
        out = np.fromiter((says(words, t) for t in labels), dtype=bool, count=len(labels))
        if clause_vectors is not None and len(labels):
            sims = sum(np.asarray(m, np.float32) @ c.T for m, c in zip(embeds, clause_vectors)) / len(self.clips)
            out |= sims.max(axis=1) >= self.SAID_SIMILARITY
        return out

    def _merged_embeds(self, view: MergedView, idx: np.ndarray) -> list[np.ndarray]:
        """The embeddings of merged-pool entries ``idx``, one matrix per encoder (gathered row by row
        from their own tables: the merged pool has no matrix of its own)."""
        cats = self.vocab.merged_categories()
        starts = np.cumsum([0] + [len(self.vocab[c]) for c in cats])
        rows = view.rows[idx]
        which = np.searchsorted(starts, rows, side="right") - 1
        return [np.stack([index.embeds(cats[w])[r - starts[w]] for w, r in zip(which, rows)])
                if len(rows) else np.empty((0, 0), np.float32) for index in self.indexes]

    def _floored(self, scores: np.ndarray, support: np.ndarray, k: int, largest: bool) -> tuple[np.ndarray, int]:
        """``scores`` with the phrases under the floor (over it, for the worst) pushed out of
        reach of a top-k, and ``k`` cut to how many are left."""
        f = self.settings.floor
        assert f is not None
        passing = support >= f if largest else support <= -f
        scores = np.where(passing, scores, -np.inf if largest else np.inf).astype(np.float32)
        return scores, min(k, int(passing.sum()))

    def weak_match(self, feats: Features) -> tuple[float | None, bool]:
        """``(match_strength, weak_match)`` of an image: how far its best flavor stands out
        (the merged table when the pack has no flavors), against the threshold for that size."""
        flavors = self.table_scores("flavors", feats) if "flavors" in self.vocab else self.merged_scores(feats)[1]
        return weak_match(flavors, self.settings.weak_z)

    # -- the relevance floor (docs/confidence.md) ------------------------------------------
    def vocab_spread(self, feats: Features) -> float:
        """The spread of the image's whole vocabulary: the standard deviation of every merged
        phrase's score, the unit the relevance floor measures margins in. One unit for every
        table, so a table whose phrases all score alike (one that does not describe the image
        as a whole) cannot have a phrase stand out just by being its table's best."""
        memo = self.memo(feats)
        if "spread" not in memo:
            memo["spread"] = pooled_spread([self.table_scores(c, feats) for c in self.vocab.merged_categories()])
        return memo["spread"]

    def table_support(self, category: str, feats: Features) -> np.ndarray:
        """Each phrase's support: its margin over its category's median for this image, in units
        of :meth:`vocab_spread` (float64, as :meth:`mark` computes one phrase's)."""
        memo = self.memo(feats)
        key = ("support", category)
        if key not in memo:
            median, std = self.category_stats(category, feats)
            spread = self.vocab_spread(feats) or std
            memo[key] = (self.table_scores(category, feats).astype(np.float64) - median) / spread
        return memo[key]

    def mark(self, p: Phrase, feats: Features) -> float:
        """Set ``p.margin``, ``p.z`` and ``p.support`` from its category's scores for this image;
        returns the support."""
        median, std = self.category_stats(p.category, feats)
        p.margin = p.score - median
        p.z = p.margin / std
        p.support = p.margin / (self.vocab_spread(feats) or std)
        return p.support

    def clears_floor(self, p: Phrase, feats: Features, *, below: bool = False,
                     floor: float | None = None) -> bool:
        """Whether the image supports ``p`` on its own: its support is at least the floor (negative mode, ``below``:
        at most minus the floor). Always True with the floor off. A phrase whose mode set its support (style mode, on
        the features it searched) is judged on that."""
        f = self.settings.floor if floor is None else floor
        if f is None:
            return True
        support = p.support if p.support is not None else self.mark(p, feats)
        return support <= -f if below else support >= f

    def split_floor(self, phrases: Sequence[Phrase], feats: Features, *,
                    below: bool = False) -> tuple[list[Phrase], list[Phrase]]:
        """``(kept, rejected)``: the phrases that clear the floor, and those that do not."""
        clears = [self.clears_floor(p, feats, below=below) for p in phrases]
        return [p for p, ok in zip(phrases, clears) if ok], [p for p, ok in zip(phrases, clears) if not ok]

    def category_stats(self, category: str, feats: Features) -> tuple[float, float]:
        """Median and standard deviation of a category's scores for this image."""
        memo = self.memo(feats)
        key = ("stats", category)
        if key not in memo:
            indexes = self.indexes if category in self.vocab else self.style_indexes()
            memo[key] = category_stats(self.table_scores(category, feats, indexes))
        return memo[key]

    def style_indexes(self) -> list[VocabularyIndex]:
        return self._owner.style_indexes()

    # -- text similarity --------------------------------------------------------------------
    def similarity(self, feats: Features, texts: Sequence[str]) -> np.ndarray:
        """Mean over encoders of the similarity of each text to one image."""
        total = np.zeros(len(texts), np.float64)
        with self._owner._using("clip"):
            for clip, f in zip(self.clips, feats):
                total += clip.encode_texts(list(texts)) @ f
        return total / len(self.clips)

    def similarities(self, pairs: Sequence[tuple[Features, str]]) -> list[float]:
        """The similarity of each (image, text) pair, with one text batch per encoder."""
        if not pairs:
            return []
        total = np.zeros(len(pairs), np.float64)
        with self._owner._using("clip"):
            for e, clip in enumerate(self.clips):
                emb = clip.encode_texts([t for _, t in pairs])
                total += np.einsum("nd,nd->n", emb, np.stack([f[e] for f, _ in pairs]))
        return (total / len(self.clips)).tolist()

    def text_vectors(self, text: str) -> list[np.ndarray]:
        """One unit vector per encoder for ``text``."""
        with self._owner._using("clip"):
            return [c.encode_texts([text])[0] for c in self.clips]


def phrase(text: str, category: str, score: float) -> Phrase:
    return Phrase(text, category, score, hypothesis=category in HYPOTHESIS_CATEGORIES)


def kept_phrases(full: str, kept: str, phrases: Sequence[Phrase], start: int) -> list[Phrase]:
    """The phrases of ``full`` (in order of appearance, after the caption) that survived truncation."""
    out: list[Phrase] = []
    pos = start
    for p in phrases:
        at = full.find(p.text, pos)
        if at < 0:
            continue
        end = at + len(p.text)
        if end > len(kept):
            break
        out.append(p)
        pos = end
    return out


def chain_steps(state: ChainState) -> list[TraceStep]:
    chain = state.result()
    return [TraceStep(p, float(s)) for p, s in zip(chain.phrases, chain.similarities)]


def best_phrase_task(ctx: SearchContext, feats: Features, pool: Sequence[Phrase], rejected: Sequence[Phrase], *,
                     min_count: int, max_count: int, score: bool, reverse: bool = False,
                     indexes: Sequence[VocabularyIndex] | None = None) -> Task:
    """A task with a chain over ``pool`` that starts at its best single phrase. Its prompt is scored against the image
    when ``score`` (style mode searched other features), else it keeps the chain's own similarity; an empty pool gives
    an empty prompt of similarity 0. Its candidate lists ``rejected``, the phrases the relevance floor kept out."""
    by_text: dict[str, Phrase] = {}
    for p in pool:
        by_text.setdefault(p.text, p)
    state = start_chain(list(by_text), ctx.at_limit, score_texts=lambda texts: ctx.similarity(feats, texts),
                        min_count=min_count, max_count=max_count, reverse=reverse, fits=ctx.fits)
    if state is None:
        return Task([], partial(Outcome, [Scored("", rejected=list(rejected))], similarity=0.0))

    def finish() -> Outcome:
        result = state.result()
        scored = Scored(result.prompt, [by_text[t] for t in result.phrases], "chain", list(rejected))
        if score and scored.prompt:
            return Outcome([scored], score=True, steps=chain_steps(state))
        return Outcome([scored], similarity=result.similarity, steps=chain_steps(state))

    return Task([Chain(feats, state, indexes or ctx.indexes)], finish)


def with_rejected(outcome: Outcome, rejected: list[Phrase]) -> Outcome:
    """``outcome`` with ``rejected`` (the phrases the relevance floor kept out) on its candidates."""
    for c in outcome.candidates:
        c.rejected = list(rejected)
    return outcome


__all__ = [
    "Chain", "Mode", "OnePromptMode", "Outcome", "Scored", "SearchContext", "Task", "best_phrase_task", "chain_steps",
    "kept_phrases", "phrase", "with_rejected",
]
