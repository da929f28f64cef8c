"""The Interrogator: orchestration only. It is given its parts (encoders, captioner,
vocabulary, cache) so tests and servers can pass their own; ``Interrogator.load``
builds them from names.
"""

from __future__ import annotations

import logging
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from .cache import EmbeddingCache
from .index import MergedView, ProgressFactory, VocabularyIndex
from .prompt import SEPARATOR, at_limit, classic_prompt, fast_prompt, fits, split_into_chunks, truncate_to_fit
from .results import MODES, Analysis, Phrase, Result
from .search import ChainState, similarities, start_chain, top_k_of_scores
from .vocab import HYPOTHESIS_CATEGORIES, VocabularyPack, load_style_pack, load_vocabulary

if TYPE_CHECKING:  # pragma: no cover
    from .models.captioners import Captioner
    from .models.clip import ClipEncoder

log = logging.getLogger(__name__)


@dataclass
class Config:
    """Settings for :meth:`Interrogator.load`. Every field has a working default."""

    clip_model: str | Sequence[str] = "ViT-L-14/openai"  # one name, or several to score with all of them
    caption_model: str | None = "blip-large"  # None: captions must be passed in
    device: str = "auto"  # auto picks cuda, then mps, then cpu
    precision: str = "auto"  # auto: fp16 on CUDA, fp32 elsewhere; or fp32 / fp16 / bf16
    cache_dir: str | None = None  # embedding cache; default: the per-user cache directory
    download_cache: bool = True  # fetch the reference's precomputed tables (skipped offline)
    vocab: Sequence[str] = ()  # --vocab paths: a folder replaces the pack, .txt files add categories
    low_vram: bool = False  # keep only one model on the accelerator at a time
    candidates: int = 2048  # size of the best/negative candidate pool (the reference's intermediate count)
    min_flavors: int = 8  # best/negative chains always take at least this many steps
    max_flavors: int = 32  # and at most this many; also fast mode's phrase count
    classic_flavors: int = 3  # flavors in classic mode
    max_tokens: int = 77  # the text encoder's window, start and end tokens included
    beam: int = 1  # best mode: prompts kept per chain step (1 = the reference's greedy chain)
    memory_budget_mb: int | None = None  # activation memory per text batch; None: a default per device
    turbo_pool: int = 1024  # turbo: candidate pool size
    turbo_keep: int | None = None  # turbo: after the first step, keep only this many phrases, highest gain first
    turbo_shortlist: int = 48  # turbo: phrases scored per lazy round, highest mean past gain first
    turbo_rounds: int = 2  # turbo: at most this many lazy rounds per chain step
    turbo_refresh: int = 8  # turbo: rescore the whole pool every this many steps (0: only the first)
    style_phrases: int = 12  # style: at most this many phrases
    score_prompt: bool = True  # fast/classic: compute Result.similarity (one text encode per image)
    weak_z: float = 4.0  # a best flavor less than this many standard deviations above its table's mean is weak
    caption_max_tokens: int = 32
    caption_batch_size: int = 8
    image_batch_size: int = 16

    chunk_tokens: int | None = None  # set (e.g. 75) to also return the prompt split into chunks

    @property
    def clip_models(self) -> list[str]:
        from .models._registry import expand_clip_names

        return expand_clip_names([self.clip_model] if isinstance(self.clip_model, str) else list(self.clip_model))


class ImageFeatures(list):  # type: ignore[type-arg]
    """One image's features, one array per encoder, with a memo of its table scores:
    a mode and its confidence figures need the same table scores several times."""

    def __init__(self, vectors: Iterable[np.ndarray] = ()) -> None:
        super().__init__(vectors)
        self.memo: dict[tuple[str, Any], Any] = {}  # (category, indexes id) -> scores; ("stats", category) -> (median, std)


@dataclass
class _Scored:
    """A candidate prompt and the phrases it holds."""

    prompt: str
    phrases: list[Phrase] = field(default_factory=list)


class Interrogator:
    """Turns images into prompt scaffolds. Safe to share across threads."""

    def __init__(
        self,
        clip: "ClipEncoder | Sequence[ClipEncoder]",
        captioner: "Captioner | None" = None,
        vocab: VocabularyPack | None = None,
        cache: EmbeddingCache | None = None,
        config: Config | None = None,
        *,
        progress: ProgressFactory | None = None,
    ) -> None:
        self.clips: list[ClipEncoder] = [clip] if not isinstance(clip, (list, tuple)) else list(clip)
        if not self.clips:
            raise ValueError("at least one CLIP encoder is needed")
        self.captioner = captioner
        self.config = config or Config()
        self.vocab = vocab if vocab is not None else load_vocabulary(self.config.vocab)
        self.cache = cache
        self.indexes = [VocabularyIndex(self.vocab, c, cache, progress) for c in self.clips]
        self._progress = progress
        self._style_indexes: list[VocabularyIndex] | None = None
        self._device_lock = threading.RLock()
        self._style_lock = threading.Lock()

    @classmethod
    def load(cls, config: Config | None = None, *, progress: ProgressFactory | None = None,
             **overrides: Any) -> "Interrogator":
        """Build an Interrogator from model names (downloads weights on first use when online)."""
        config = replace(config or Config(), **overrides)
        from .models.captioners import load_captioner
        from .models.clip import load_clip

        vocab = load_vocabulary(config.vocab)  # fail fast on a bad --vocab before loading models
        captioner = None
        if config.caption_model:
            captioner = load_captioner(config.caption_model, device=config.device, precision=config.precision,
                                       max_new_tokens=config.caption_max_tokens)
            if config.low_vram:
                captioner.offload()
        clips = [load_clip(n, device=config.device, precision=config.precision,
                           memory_budget_mb=config.memory_budget_mb) for n in config.clip_models]
        cache = EmbeddingCache(config.cache_dir, download=config.download_cache)
        return cls(clips, captioner, vocab, cache, config, progress=progress)

    # -- names ---------------------------------------------------------------
    @property
    def clip_name(self) -> str:
        return " + ".join(c.name for c in self.clips)

    @property
    def caption_name(self) -> str | None:
        return self.captioner.name if self.captioner is not None else None

    # -- device placement ----------------------------------------------------
    @contextmanager
    def _using(self, which: str) -> Iterator[None]:
        """With low_vram, move the needed model onto the accelerator and the other off it."""
        if not self.config.low_vram:
            yield
            return
        with self._device_lock:
            if which == "caption":
                for c in self.clips:
                    c.offload()
                if self.captioner is not None:
                    self.captioner.activate()
            else:
                if self.captioner is not None:
                    self.captioner.offload()
                for c in self.clips:
                    c.activate()
            yield

    # -- building blocks -----------------------------------------------------
    def prepare(self) -> None:
        """Embed (or load from cache) every table now instead of on first use."""
        with self._using("clip"):
            for index in self.indexes:
                index.prepare()

    def caption(self, images: Sequence[Any]) -> list[str]:
        if self.captioner is None:
            raise ValueError("no caption model is loaded: pass a caption (--caption TEXT) or load a captioner")
        with self._using("caption"):
            return self.captioner.caption(images, batch_size=self.config.caption_batch_size)

    def image_features(self, images: Sequence[Any]) -> list[np.ndarray]:
        """Per encoder, [N, D] normalised image features."""
        with self._using("clip"):
            return [c.encode_images(images, batch_size=self.config.image_batch_size) for c in self.clips]

    def count_tokens(self, text: str) -> int:
        return max(c.count_tokens(text) for c in self.clips)

    def _fits(self, text: str) -> bool:
        return all(fits(text, c.count_tokens, self.config.max_tokens) for c in self.clips)

    def _at_limit(self, text: str) -> bool:
        return any(at_limit(text, c.count_tokens, self.config.max_tokens) for c in self.clips)

    def _truncate(self, text: str) -> str:
        return truncate_to_fit(text, self.count_tokens, self.config.max_tokens)

    @property
    def window(self) -> int:
        """The encoders' context window (77 for every Stable Diffusion text encoder)."""
        return min(c.context_length for c in self.clips)

    def chunks(self, prompt: str, chunk_tokens: int = 75) -> list[str]:
        """Split a long prompt at ", " into chunks of at most ``chunk_tokens`` text tokens."""
        return split_into_chunks(prompt, self.count_tokens, chunk_tokens)

    def similarity(self, feats: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        """Mean over encoders of the similarity of each text to the image."""
        total = np.zeros(len(texts), np.float64)
        with self._using("clip"):
            for clip, f in zip(self.clips, feats):
                total += clip.encode_texts(list(texts)) @ f
        return total / len(self.clips)

    def _similarities(self, feats_list: Sequence[Sequence[np.ndarray]], texts: Sequence[str]) -> list[float]:
        """The similarity of each image to its own text, with one text batch per encoder."""
        if not texts:
            return []
        total = np.zeros(len(texts), np.float64)
        with self._using("clip"):
            for e, clip in enumerate(self.clips):
                emb = clip.encode_texts(list(texts))
                total += np.einsum("nd,nd->n", emb, np.stack([f[e] for f in feats_list]))
        return (total / len(self.clips)).tolist()

    def _run_chains(self, jobs: Sequence[tuple[Sequence[np.ndarray], ChainState]]) -> None:
        """Advance several images' chains in lockstep; each step's extensions share encoder batches."""
        while True:
            active = [(feats, state) for feats, state in jobs if not state.done]
            if not active:
                return
            requests = [(j, prefix, rest) for j, (_, state) in enumerate(active) for prefix, rest in state.requests()]
            totals = [np.zeros(len(rest), np.float64) for _, _, rest in requests]
            asked = [k for k, (_, _, rest) in enumerate(requests) if rest]  # turbo rounds may skip a beam
            with self._using("clip"):
                for e, clip in enumerate(self.clips):
                    outs = clip.encode_extensions_many([requests[k][1:] for k in asked])
                    for k, out in zip(asked, outs):
                        totals[k] += out @ active[requests[k][0]][0][e]
            for j, (_, state) in enumerate(active):
                state.advance([totals[k] / len(self.clips) for k, r in enumerate(requests) if r[0] == j])

    def _table_scores(self, category: str, feats: Sequence[np.ndarray],
                      indexes: Sequence[VocabularyIndex] | None = None) -> np.ndarray:
        """Mean over encoders of each label's similarity; memoised per image (see ImageFeatures)."""
        indexes = indexes or self.indexes
        memo = getattr(feats, "memo", None)
        key = (category, id(indexes))
        if memo is not None and key in memo:
            return memo[key]
        total = None
        for index, f in zip(indexes, feats):
            s = similarities(f, index.embeds(category)).astype(np.float64)
            total = s if total is None else total + s
        assert total is not None
        scores = (total / len(self.clips)).astype(np.float32)
        if memo is not None:
            memo[key] = scores
        return scores

    def _merged_scores(self, feats: Sequence[np.ndarray]) -> tuple[MergedView, np.ndarray]:
        view = self.indexes[0].merged()
        cats = self.vocab.merged_categories()
        every = np.concatenate([self._table_scores(c, feats) for c in cats]) if cats else np.empty(0, np.float32)
        return view, every[view.rows]

    def _top(self, category: str, feats: Sequence[np.ndarray], k: int, *, largest: bool = True) -> list[Phrase]:
        scores = self._table_scores(category, feats)
        s, idx = top_k_of_scores(scores, k, largest=largest)
        labels = self.vocab[category].labels
        return [self._phrase(labels[i], category, float(v)) for v, i in zip(s, idx)]

    def _top_merged(self, feats: Sequence[np.ndarray], k: int) -> list[Phrase]:
        view, scores = self._merged_scores(feats)
        s, idx = top_k_of_scores(scores, k)
        return [self._phrase(view.labels[i], view.categories[i], float(v)) for v, i in zip(s, idx)]

    @staticmethod
    def _phrase(text: str, category: str, score: float) -> Phrase:
        return Phrase(text, category, score, hypothesis=category in HYPOTHESIS_CATEGORIES)

    # -- modes -----------------------------------------------------------------
    def _classic(self, feats: Sequence[np.ndarray], caption: str, n_flavors: int) -> _Scored:
        medium = self._top("mediums", feats, 1)[0]
        artist = self._top("artists", feats, 1)[0]
        trending = self._top("trendings", feats, 1)[0]
        movement = self._top("movements", feats, 1)[0]
        flavors = self._top("flavors", feats, n_flavors)
        full = classic_prompt(caption, medium.text, artist.text, trending.text, movement.text,
                              [f.text for f in flavors])
        prompt = self._truncate(full)
        return _Scored(prompt, _kept(full, prompt, [medium, artist, trending, movement, *flavors], len(caption)))

    def _fast(self, feats: Sequence[np.ndarray], caption: str, n: int) -> _Scored:
        tops = self._top_merged(feats, n)
        full = fast_prompt(caption, [p.text for p in tops])
        prompt = self._truncate(full)
        return _Scored(prompt, _kept(full, prompt, tops, len(caption)))

    def _best_batch(self, feats_list: Sequence[Sequence[np.ndarray]], captions: Sequence[str],
                    turbo: bool = False) -> list[tuple[_Scored, float]]:
        cfg = self.config
        pool_size = min(cfg.candidates, cfg.turbo_pool) if turbo else cfg.candidates
        pools = [self._top_merged(feats, pool_size) for feats in feats_list]
        caption_sims = self._similarities(feats_list, captions)
        jobs = [(feats, ChainState(
            [p.text for p in pool], self._at_limit, start=caption, start_similarity=sim,
            min_count=cfg.min_flavors, max_count=cfg.max_flavors, beam=cfg.beam,
            shortlist=cfg.turbo_shortlist if turbo else None, refresh_every=cfg.turbo_refresh,
            max_rounds=cfg.turbo_rounds, keep=cfg.turbo_keep if turbo else None,
        )) for feats, caption, pool, sim in zip(feats_list, captions, pools, caption_sims)]
        self._run_chains(jobs)
        out = []
        for (feats, state), caption, pool in zip(jobs, captions, pools):
            chain = state.result()
            by_text = {p.text: p for p in pool}
            chained = _Scored(chain.prompt, [by_text[t] for t in chain.phrases])
            if cfg.max_tokens > self.window:
                chained = self._extend_past_window(chained, pool)
            # As in the reference, the classic candidate here uses max_flavors flavors.
            candidates = [
                _Scored(caption),
                self._classic(feats, caption, cfg.max_flavors),
                self._fast(feats, caption, cfg.max_flavors),
                chained,
            ]
            sims = self.similarity(feats, [c.prompt for c in candidates])
            best = int(np.argmax(sims))
            out.append((candidates[best], float(sims[best])))
        return out

    def _extend_past_window(self, scored: _Scored, pool: Sequence[Phrase]) -> _Scored:
        """Past the CLIP window the encoder cannot score additions, so the remaining budget
        is filled with the pool's next phrases in order of their own scores."""
        used = {p.text for p in scored.phrases}
        prompt, phrases = scored.prompt, list(scored.phrases)
        for p in pool:
            if p.text in used:
                continue
            candidate = prompt + SEPARATOR + p.text
            if not self._fits(candidate):
                break
            prompt = candidate
            phrases.append(p)
        return _Scored(prompt, phrases)

    # -- style mode --------------------------------------------------------------
    def style_indexes(self) -> list[VocabularyIndex]:
        """Indexes over the style pack plus the active pack's mediums, movements and artists."""
        with self._style_lock:  # built once, even when threads ask at the same time
            if self._style_indexes is None:
                tables = dict(load_style_pack().tables)
                for c in ("mediums", "movements", "artists"):
                    if c in self.vocab:
                        tables[c] = self.vocab[c]
                pack = VocabularyPack("style", tables)
                self._style_indexes = [VocabularyIndex(pack, c, self.cache, self._progress) for c in self.clips]
            return self._style_indexes

    def _style_batch(self, feats_list: Sequence[Sequence[np.ndarray]],
                     captions: Sequence[str | None]) -> list[tuple[_Scored, float]]:
        """Style-only prompts: the caption's direction is projected out of the image features,
        and phrases that restate the caption are excluded (see docs/style.md)."""
        cfg = self.config
        indexes = self.style_indexes()
        pack = indexes[0].pack
        pools: list[tuple[Sequence[np.ndarray], list[Phrase]]] = []
        for feats, caption in zip(feats_list, captions):
            cap = [c.encode_texts([caption])[0] for c in self.clips] if caption else None
            styled = [_project_out(f, c) for f, c in zip(feats, cap)] if cap else list(feats)
            subject = subject_words(caption or "")
            pool: list[Phrase] = []
            for category in pack.categories():
                scores = self._table_scores(category, styled, indexes)
                near = self._table_scores(category, cap, indexes) if cap else None
                for i, label in enumerate(pack[category].labels):
                    if restates_subject(label, subject) or (near is not None and near[i] >= SUBJECT_COSINE):
                        continue
                    pool.append(self._phrase(label, category, float(scores[i])))
            pool.sort(key=lambda p: -p.score)  # stable: table order breaks ties
            pools.append((styled, pool[: cfg.candidates]))
        chains = self._chains_from_best_phrase(pools, min_count=min(4, cfg.style_phrases),
                                               max_count=max(0, cfg.style_phrases - 1))
        # Report the similarity to the image itself, comparable with the other modes (one text batch).
        filled = [i for i, (scored, _) in enumerate(chains) if scored.prompt]
        sims = dict(zip(filled, self._similarities([feats_list[i] for i in filled],
                                                   [chains[i][0].prompt for i in filled])))
        return [(scored, sims.get(i, 0.0)) for i, (scored, _) in enumerate(chains)]

    def _chains_from_best_phrase(self, pools: Sequence[tuple[Sequence[np.ndarray], list[Phrase]]], *,
                                 min_count: int, max_count: int,
                                 reverse: bool = False) -> list[tuple[_Scored, float]]:
        """For each (features, phrase pool), a chain that starts at the pool's best single phrase."""
        jobs, states = [], []
        for feats, pool in pools:
            by_text: dict[str, Phrase] = {}
            for p in pool:
                by_text.setdefault(p.text, p)
            state = start_chain(list(by_text), self._at_limit,
                                score_texts=lambda texts, f=feats: self.similarity(f, texts),
                                min_count=min_count, max_count=max_count, reverse=reverse)
            states.append((by_text, state))
            if state is not None:
                jobs.append((feats, state))
        self._run_chains(jobs)
        out = []
        for by_text, state in states:
            if state is None:
                out.append((_Scored(""), 0.0))
                continue
            chain = state.result()
            out.append((_Scored(chain.prompt, [by_text[t] for t in chain.phrases]), chain.similarity))
        return out

    def _negative_batch(self, feats_list: Sequence[Sequence[np.ndarray]]) -> list[tuple[_Scored, float]]:
        cfg = self.config
        pools = []
        for feats in feats_list:
            pool = self._top("flavors", feats, cfg.candidates, largest=False)
            if "negative" in self.vocab:
                neg_scores = self._table_scores("negative", feats)
                pool += [self._phrase(t, "negative", float(s))
                         for t, s in zip(self.vocab["negative"].labels, neg_scores)]
            pools.append((feats, pool))
        return self._chains_from_best_phrase(pools, min_count=cfg.min_flavors, max_count=cfg.max_flavors,
                                             reverse=True)

    # -- public API --------------------------------------------------------------
    def interrogate(self, image: Any, mode: str = "best", caption: str | None = None, *,
                    negative: bool = False) -> Result:
        """Interrogate one PIL image. ``caption`` skips the captioner; ``negative`` adds the
        paired negative prompt (``result.negative``), reusing the image features."""
        return next(self.interrogate_batch([image], mode, captions=[caption], negative=negative))

    def interrogate_batch(
        self,
        images: Sequence[Any],
        mode: str = "best",
        captions: Sequence[str | None] | None = None,
        sources: Sequence[str | None] | None = None,
        *,
        negative: bool = False,
    ) -> Iterator[Result]:
        """Interrogate several images; results are yielded one by one, in order.

        Images are captioned and encoded in batches, and the chains of best and
        negative modes share encoder batches. Arguments are checked at the call.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
        n = len(images)
        caps: list[str | None] = list(captions) if captions is not None else [None] * n
        if len(caps) != n:
            raise ValueError(f"{len(caps)} captions given for {n} images")
        srcs = list(sources) if sources is not None else [None] * n
        if len(srcs) != n:
            raise ValueError(f"{len(srcs)} sources given for {n} images")
        return self._interrogate_batch(images, mode, caps, srcs, negative)

    def _interrogate_batch(self, images: Sequence[Any], mode: str, caps: list[str | None],
                           srcs: list[str | None], negative: bool) -> Iterator[Result]:
        n = len(images)
        captioned = [False] * n
        if mode != "negative" and not (mode == "style" and self.captioner is None):
            missing = [i for i, c in enumerate(caps) if not c]
            if missing:
                generated = self.caption([images[i] for i in missing])
                for i, c in zip(missing, generated):
                    caps[i], captioned[i] = c, True
        feats_all = self.image_features(images)
        per_image = [ImageFeatures(f[i] for f in feats_all) for i in range(n)]
        with self._using("clip"):
            scored: Sequence[tuple[_Scored, float | None]]
            if mode in ("best", "turbo"):
                scored = self._best_batch(per_image, caps, turbo=mode == "turbo")  # type: ignore[arg-type]
            elif mode == "negative":
                scored = self._negative_batch(per_image)
            elif mode == "style":
                scored = self._style_batch(per_image, caps)
            else:
                scored = self._simple_batch(per_image, mode, caps)  # type: ignore[arg-type]
            paired = self._negative_batch(per_image) if negative and mode != "negative" else None
        for i, (sc, sim) in enumerate(scored):
            result = self._result(per_image[i], sc, sim, mode, caps[i] if mode != "negative" else None,
                                  captioned[i], srcs[i])
            if paired is not None:
                result.negative = self._result(per_image[i], paired[i][0], paired[i][1], "negative", None,
                                               False, srcs[i])
            yield result

    def _simple_batch(self, feats_list: Sequence[Sequence[np.ndarray]], mode: str,
                      captions: Sequence[str]) -> list[tuple[_Scored, float | None]]:
        """Classic or fast prompts; their similarities (when scored) in one text batch."""
        cfg = self.config
        scored = [self._classic(feats, caption, cfg.classic_flavors) if mode == "classic"
                  else self._fast(feats, caption, cfg.max_flavors) for feats, caption in zip(feats_list, captions)]
        if not cfg.score_prompt:
            return [(s, None) for s in scored]
        return list(zip(scored, self._similarities(feats_list, [s.prompt for s in scored])))

    def _result(self, feats: Sequence[np.ndarray], scored: _Scored, sim: float | None, mode: str,
                caption: str | None, captioned: bool, source: str | None) -> Result:
        for p in scored.phrases:
            median, std = self._category_stats(p.category, feats)
            p.margin = p.score - median
            p.weight = emphasis_weight(p.margin / std) if mode != "negative" else 1.0
        strength = self._match_strength(feats)
        return Result(
            prompt=scored.prompt, mode=mode, caption=caption, similarity=sim, clip_model=self.clip_name,
            caption_model=self.caption_name if captioned else None,  # None when the caption was given
            phrases=scored.phrases, source=source, token_count=self.count_tokens(scored.prompt),
            match_strength=strength, weak_match=strength is not None and strength < self.config.weak_z,
            chunks=self.chunks(scored.prompt, self.config.chunk_tokens) if self.config.chunk_tokens else None,
        )

    def _category_stats(self, category: str, feats: Sequence[np.ndarray]) -> tuple[float, float]:
        """Median and standard deviation of a category's scores for this image (memoised like the scores)."""
        memo = getattr(feats, "memo", None)
        key = ("stats", category)
        if memo is not None and key in memo:
            return memo[key]
        indexes = self.indexes if category in self.vocab else self.style_indexes()
        scores = self._table_scores(category, feats, indexes)
        stats = (float(np.median(scores)), float(scores.std()) or 1e-6)
        if memo is not None:
            memo[key] = stats
        return stats

    def _match_strength(self, feats: Sequence[np.ndarray]) -> float | None:
        """z-score of the best flavor within the flavor table (the merged pool without flavors)."""
        if "flavors" in self.vocab:
            scores = self._table_scores("flavors", feats)
        else:
            scores = self._merged_scores(feats)[1]
        if scores.size < 2:
            return None
        return float((scores.max() - scores.mean()) / (scores.std() or 1e-6))

    def analyze(self, image: Any, top_n: int = 5, caption: str | None = None,
                source: str | None = None) -> Analysis:
        """The top ``top_n`` phrases of every category, with scores."""
        feats = ImageFeatures(f[0] for f in self.image_features([image]))
        with self._using("clip"):
            cats = {c: self._top(c, feats, top_n) for c in self.vocab.categories() if c != "negative"}
            for c, phrases in cats.items():
                median, _ = self._category_stats(c, feats)
                for p in phrases:
                    p.margin = p.score - median
        return Analysis(cats, self.clip_name, caption, source)


def _kept(full: str, kept: str, phrases: Iterable[Phrase], start: int) -> list[Phrase]:
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


#: Phrases whose embedding is this close to the caption's restate the subject (style mode).
SUBJECT_COSINE = 0.95

_STOP = frozenset("""a an the of on in with and at to by for from its his her their is are there this that
these those some two three one very next front side top bottom background foreground close up view shot
photo photograph picture image painting drawing illustration art style render sitting standing""".split())


def subject_words(caption: str) -> frozenset[str]:
    """Content words of a caption (lowercase, naive singular), excluding generic and style words."""
    words = re.findall(r"[a-z][a-z'-]+", caption.lower())
    return frozenset(_singular(w) for w in words if len(w) >= 3 and w not in _STOP)


def restates_subject(phrase: str, subject: frozenset[str]) -> bool:
    return any(_singular(w) in subject for w in re.findall(r"[a-z][a-z'-]+", phrase.lower()))


def _singular(word: str) -> str:
    if len(word) <= 3 or not word.endswith("s") or word.endswith("ss"):
        return word
    if word.endswith(("xes", "shes", "ches", "sses", "zes")):
        return word[:-2]
    if word.endswith("ies"):
        return word[:-3] + "y"
    return word[:-1]


def _project_out(image: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Remove the caption's direction from the image features and renormalise."""
    d = direction / (np.linalg.norm(direction) or 1.0)
    v = image - float(image @ d) * d
    return (v / (np.linalg.norm(v) or 1.0)).astype(np.float32)


def emphasis_weight(z: float) -> float:
    """A1111 emphasis from a phrase's z-score within its category (docs/confidence.md):
    1.0 at z=2, +0.05 per standard deviation, clamped to [0.9, 1.3], in steps of 0.05."""
    w = 1.0 + 0.05 * (z - 2.0)
    return round(min(1.3, max(0.9, w)) * 20) / 20
