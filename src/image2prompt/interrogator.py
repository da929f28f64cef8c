"""The Interrogator: orchestration only.

It is given its parts (encoders, captioner, vocabulary, cache) so tests and hosts
can pass their own; :meth:`Interrogator.load` builds them from names. Its work is
two public stages and their composition:

* :meth:`Interrogator.encode`: images -> :class:`~image2prompt.features.Features`
  (captions and one vector per encoder), batched;
* :meth:`Interrogator.search`: features + :class:`~image2prompt.settings.SearchSettings`
  -> results, each yielded as soon as its image's search ends;
* :meth:`Interrogator.interrogate` / :meth:`interrogate_batch`: the two in a row.

What a mode does lives in :mod:`image2prompt.modes`; the scoring tools it uses in
:class:`~image2prompt.modes.base.SearchContext`.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .cache import EmbeddingCache
from .errors import SettingsError
from .features import Features, FeaturesError
from .identity import ModelIdentity
from .index import ProgressFactory, VocabularyIndex
from .models._registry import DEFAULT_CAPTIONER, LOW_VRAM_CAPTIONER  # what caption_model="auto" picks
from .modes import Chain, Outcome, Scored, SearchContext, Task, get_mode, require_caption
from .prompt import clean_caption
from .prompt.answers import clean_answer
from .prompt.caption import clean_given_caption
from .results import Analysis, Result, Trace
from .search import emphasis_weight
from .settings import DEFAULT_FLOOR, SearchSettings
from .vocab import VocabularyPack, load_style_pack, load_vocabulary

if TYPE_CHECKING:  # pragma: no cover
    from .models.clip import ClipEncoder

log = logging.getLogger(__name__)


@dataclass
class Config:
    """Load-time settings for :meth:`Interrogator.load`: models, device, precision, cache and
    vocabulary. Every field has a working default. Search settings are per call
    (:class:`~image2prompt.settings.SearchSettings`)."""

    clip_model: str | Sequence[str] = "ViT-L-14/openai"  # one name, or several to score with all of them
    caption_model: str | None = "auto"  # auto: blip-large (blip-base with low_vram); None: captions are given
    device: str = "auto"  # auto picks cuda, then mps, then cpu
    precision: str = "auto"  # auto: fp16 on CUDA, fp32 elsewhere; or fp32 / fp16 / bf16
    caption_precision: str | None = None  # the captioner's, if not precision's (bf16 on an AMX CPU)
    cache_dir: str | None = None  # embedding cache; default: the per-user cache directory
    download_cache: bool = True  # fetch the reference's precomputed tables (skipped offline)
    vocab: Sequence[str] = ()  # --vocab paths: a folder replaces the pack, .txt files add categories
    low_vram: bool = False  # keep only one model on the accelerator at a time
    memory_budget_mb: int | None = None  # activation memory per text batch; None: a default per device
    caption_max_tokens: int | None = None  # a caption's token limit; None: 32 for BLIP and GIT, 96 for VLMs
    caption_prompt: str | None = None  # what a VLM (in-process or openai:) is asked; None: one descriptive sentence
    caption_endpoint: str | None = None  # openai: captioners: the API's base URL (None: $IMAGE2PROMPT_CAPTION_ENDPOINT)
    caption_concurrency: int | None = None  # openai: captioners: requests in flight (None: the environment's, or 4)
    caption_batch_size: int = 16
    image_batch_size: int = 16

    @property
    def clip_models(self) -> list[str]:
        from .models._registry import expand_clip_names

        return expand_clip_names([self.clip_model] if isinstance(self.clip_model, str) else list(self.clip_model))

    def caption_options(self) -> dict[str, Any]:
        """What :func:`~image2prompt.models.captioners.load_captioner` is given for this captioner
        besides device and precision: the token limit, and for a VLM its instruction (for a caption
        server its endpoint and concurrency too). A captioner that takes no instruction (BLIP, GIT)
        ignores ``caption_prompt``, with a warning."""
        from .models import parse_caption_name
        from .models.instructions import INSTRUCTED_KINDS

        assert self.captioner is not None
        kind = parse_caption_name(self.captioner).kind
        instructed = kind in INSTRUCTED_KINDS
        limit = self.caption_max_tokens if self.caption_max_tokens is not None else 96 if instructed else 32
        options: dict[str, Any] = {"max_new_tokens": limit}
        if self.caption_prompt is not None:
            if instructed:
                options["instruction"] = self.caption_prompt
            else:
                log.warning("%s takes no instruction: the caption prompt is ignored", self.captioner)
        if kind == "remote":
            options.update({k: v for k, v in (("endpoint", self.caption_endpoint),
                                              ("concurrency", self.caption_concurrency)) if v is not None})
        return options

    @property
    def captioner(self) -> str | None:
        """The captioner to load: ``auto`` resolved, ``none`` and None meaning no captioner."""
        name = self.caption_model
        if name is None or name.strip().lower() == "none":
            return None
        if name.strip().lower() == "auto":
            return LOW_VRAM_CAPTIONER if self.low_vram else DEFAULT_CAPTIONER
        return name


class Interrogator:
    """Turns images into prompt scaffolds. Safe to share across threads."""

    def __init__(
        self,
        clip: ClipEncoder | Sequence[ClipEncoder],
        captioner: Any = None,
        vocab: VocabularyPack | None = None,
        cache: EmbeddingCache | None = None,
        config: Config | None = None,
        *,
        progress: ProgressFactory | None = None,
    ) -> None:
        self.clips: list[ClipEncoder] = list(clip) if isinstance(clip, (list, tuple)) else [cast("ClipEncoder", clip)]
        if not self.clips:
            raise ValueError("at least one CLIP encoder is needed")
        self.captioner = captioner
        self.config = config or Config()
        self.vocab = vocab if vocab is not None else load_vocabulary(self.config.vocab)
        self.cache = cache
        self.indexes = [VocabularyIndex(self.vocab, c, cache, progress) for c in self.clips]
        #: False when the host places the models itself (ComfyUI): nothing is ever moved.
        self.manage_devices = True
        self._progress = progress
        self._style_indexes: list[VocabularyIndex] | None = None
        self._device_lock = threading.RLock()
        self._style_lock = threading.Lock()
        self._vocab_identity: dict[str, str] | None = None

    @classmethod
    def load(cls, config: Config | None = None, *, progress: ProgressFactory | None = None,
             **overrides: Any) -> Interrogator:
        """Build an Interrogator from model names (downloads weights on first use when online)."""
        config = replace(config or Config(), **overrides)
        from .models.captioners import load_captioner
        from .models.clip import load_clip

        vocab = load_vocabulary(config.vocab)  # fail fast on a bad --vocab before loading models
        captioner = None
        if config.captioner:
            captioner = load_captioner(config.captioner, device=config.device,
                                       precision=config.caption_precision or config.precision,
                                       **config.caption_options())
            if config.low_vram and hasattr(captioner, "offload"):
                captioner.offload()
        clips = [load_clip(n, device=config.device, precision=config.precision,
                           memory_budget_mb=config.memory_budget_mb) for n in config.clip_models]
        cache = EmbeddingCache(config.cache_dir, download=config.download_cache)
        return cls(clips, captioner, vocab, cache, config, progress=progress)

    # -- names and identity ------------------------------------------------------------
    @property
    def clip_name(self) -> str:
        return " + ".join(c.name for c in self.clips)

    @property
    def caption_name(self) -> str | None:
        return self.captioner.name if self.captioner is not None else None

    @property
    def input_side(self) -> int | None:
        """The largest image side (pixels) any loaded model's preprocessing resizes or crops to:
        each CLIP encoder's and the captioner's. Decoding front ends pass it to
        :func:`image2prompt.io.load_image` as ``reduce_to``, so a large image is held at a few
        times this size, not at full size. None when a model does not say (a plugin's): then
        images are kept whole."""
        sides = [getattr(c, "input_side", None) for c in self.clips]
        if self.captioner is not None:
            sides.append(getattr(self.captioner, "input_side", None))
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sides):
            return None
        return max(int(s) for s in sides if s is not None)

    @property
    def encoder_keys(self) -> tuple[str, ...]:
        """What :class:`Features` from these encoders are labelled with."""
        return tuple(c.cache_key for c in self.clips)

    @property
    def identity(self) -> ModelIdentity:
        """The loaded models and vocabulary, as a fingerprint names them (:mod:`image2prompt.identity`)."""
        if self._vocab_identity is None:
            self._vocab_identity = {name: table.sha256 for name, table in self.vocab.tables.items()}
        caption = getattr(self.captioner, "identity", None) or self.caption_name  # a VLM's name and instruction
        return ModelIdentity.of(self.encoder_keys, caption, self._vocab_identity)

    def fingerprint(self, settings: SearchSettings) -> str:
        """A short hash of the settings, the models and the vocabulary: equal fingerprints
        mean the same search of the same image gives the same result (the resume key)."""
        return self.identity.fingerprint(settings)

    # -- device placement -------------------------------------------------------------
    @contextmanager
    def _using(self, which: str) -> Iterator[None]:
        """With low_vram, move the needed model onto the accelerator and the other off it."""
        if not self.config.low_vram or not self.manage_devices:
            yield
            return
        with self._device_lock:
            captioner = self.captioner
            if which == "caption":
                for c in self.clips:
                    c.offload()
                if captioner is not None and hasattr(captioner, "activate"):
                    captioner.activate()
            else:
                if captioner is not None and hasattr(captioner, "offload"):
                    captioner.offload()
                for c in self.clips:
                    c.activate()
            yield

    # -- building blocks ----------------------------------------------------------------
    def prepare(self) -> None:
        """Embed (or load from cache) every table now instead of on first use."""
        with self._using("clip"):
            for index in self.indexes:
                index.prepare()

    def caption(self, images: Sequence[Any]) -> list[str]:
        if self.captioner is None:
            raise SettingsError("no caption model is loaded: give a caption, or load a caption model")
        with self._using("caption"):
            raw = self.captioner.caption(images, batch_size=self.config.caption_batch_size)
        if getattr(self.captioner, "chat", False):  # a chat model's answer: reasoning, openers, loops
            raw = [clean_answer(t) for t in raw]
        return [clean_caption(t) for t in raw]

    def image_features(self, images: Sequence[Any]) -> list[np.ndarray]:
        """Per encoder, [N, D] normalised image features."""
        with self._using("clip"):
            return [c.encode_images(images, batch_size=self.config.image_batch_size) for c in self.clips]

    def count_tokens(self, text: str) -> int:
        return max(c.count_tokens(text) for c in self.clips)

    def similarity(self, feats: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        """Mean over encoders of the similarity of each text to one image's features."""
        f = feats if isinstance(feats, Features) else Features(list(feats), self.encoder_keys)
        return SearchContext(self, SearchSettings()).similarity(f, texts)

    def style_indexes(self) -> list[VocabularyIndex]:
        """Indexes over the style pack plus the active pack's mediums, movements and artists (style
        mode scores the active pack's flavors with the main indexes, so they are not held twice)."""
        with self._style_lock:  # built once, even when threads ask at the same time
            if self._style_indexes is None:
                tables = dict(load_style_pack().tables)
                for c in ("mediums", "movements", "artists"):
                    if c in self.vocab:
                        tables[c] = self.vocab[c]
                pack = VocabularyPack("style", tables)
                self._style_indexes = [VocabularyIndex(pack, c, self.cache, self._progress) for c in self.clips]
            return self._style_indexes

    # -- stage 1: encode -------------------------------------------------------------------
    def encode(self, images: Sequence[Any], captions: Sequence[str | None] | None = None, *,
               sources: Sequence[str | None] | None = None,
               generate_captions: bool | Sequence[bool] = True,
               captioned_by: Sequence[str | None] | None = None) -> list[Features]:
        """Caption (where no caption is given and a captioner is loaded) and encode decoded
        RGB images, in batches. Returns one :class:`Features` per image, in order.
        ``generate_captions`` is one flag for every image or one per image (a server's
        micro-batch mixes requests that want captions with ones that do not). ``captioned_by`` names,
        per image, the captioner that wrote a given caption (captions asked for ahead, as the Runner
        asks a caption server): they are labelled as generated."""
        n = len(images)
        # A given caption is typed or sent by someone: control characters and line breaks become
        # spaces, so the prompt stays one line (a server, a manifest, the CLI alike).
        caps: list[str | None] = [clean_given_caption(c) if c else c for c in _per_image(captions, n, "captions")]
        srcs: list[str | None] = _per_image(sources, n, "sources")
        wanted: list[bool] = ([bool(generate_captions)] * n if isinstance(generate_captions, bool)
                              else [bool(w) for w in _per_image(generate_captions, n, "caption flags")])
        by: list[str | None] = list(_per_image(captioned_by, n, "captioners")) if captioned_by is not None else [None] * n
        if self.captioner is not None and any(wanted):
            missing = [i for i, c in enumerate(caps) if not c and wanted[i]]
            if missing:
                for i, c in zip(missing, self.caption([images[i] for i in missing])):
                    caps[i], by[i] = c, self.caption_name
        vectors = self.image_features(images)
        keys = self.encoder_keys
        return [Features([v[i] for v in vectors], keys, caps[i], by[i], srcs[i]) for i in range(n)]

    def needs_caption(self, settings: SearchSettings | str) -> bool:
        """Whether images must be captioned before a search with these settings (or this mode)."""
        mode = get_mode(settings if isinstance(settings, str) else settings.mode)
        return mode.needs_caption(self.captioner is not None)

    # -- stage 2: search ---------------------------------------------------------------------
    def search(self, features: Sequence[Features], settings: SearchSettings | None = None) -> Iterator[Result]:
        """Search each image's prompt; results come as each image's search ends (completion
        order; ``Result.source`` says which). Images of one call share encoder batches."""
        return (r for _, r in self.search_indexed(features, settings))

    def search_indexed(self, features: Sequence[Features], settings: SearchSettings | None = None, *,
                       identity: ModelIdentity | None = None) -> Iterator[tuple[int, Result]]:
        """:meth:`search`, with each result's position in ``features``. Arguments are checked at the call.

        ``identity`` labels the results (their fingerprint) when it is not this interrogator's own:
        a process that searches features another one encoded, without loading its captioner."""
        settings = settings or SearchSettings()
        mode = get_mode(settings.mode)
        feats = list(features)
        for i, f in enumerate(feats):
            if f.encoders != self.encoder_keys:
                raise FeaturesError(f"{f.source or f'features {i}'}: encoded with {', '.join(f.encoders)}, "
                                    f"but the loaded encoders are {', '.join(self.encoder_keys)}")
            if not f.caption:
                require_caption(settings.mode, has_caption=False, has_captioner=False,
                                source=f.source or f"image {i}")
        return self._search(feats, settings, mode, (identity or self.identity).fingerprint(settings))

    def _search(self, feats: list[Features], settings: SearchSettings, mode: Any,
                fingerprint: str) -> Iterator[tuple[int, Result]]:
        ctx = SearchContext(self, settings)
        cut: set[int] = set()
        if mode.uses_caption:  # the token budget is hard: a caption over it is cut at a word boundary
            for i, f in enumerate(feats):
                fitted = ctx.fit_caption(f.caption) if f.caption else f.caption
                if fitted != f.caption:
                    feats[i] = Features(f.vectors, f.encoders, fitted, f.caption_model, f.source)
                    cut.add(i)
        with self._using("clip"):
            main = mode.plan(ctx, feats)
            paired = (get_mode("negative").plan(ctx, feats)
                      if settings.negative and mode.name != "negative" else None)
        tasks = [[main[i]] + ([paired[i]] if paired is not None else []) for i in range(len(feats))]
        pending = list(range(len(feats)))
        while pending:
            ready = [i for i in pending if all(t.done for t in tasks[i])]
            if ready:
                yield from self._finish(ctx, mode, feats, tasks, ready, fingerprint, cut)
                pending = [i for i in pending if i not in set(ready)]
            if pending:
                self._advance([c for i in pending for t in tasks[i] for c in t.chains if not c.state.done])

    def _advance(self, chains: list[Chain]) -> None:
        """One round of every active chain; their extensions share encoder batches."""
        requests = [(k, prefix, rest) for k, ch in enumerate(chains) for prefix, rest in ch.state.requests()]
        totals = [np.zeros(len(rest), np.float64) for _, _, rest in requests]
        asked = [j for j, (_, _, rest) in enumerate(requests) if rest]  # turbo rounds may skip a beam
        with self._using("clip"):
            for e, clip in enumerate(self.clips):
                sources = {id(ch.indexes[e]): ch.indexes[e] for ch in chains}
                ids: collections.ChainMap[Any, Any] = collections.ChainMap(
                    *(ix.token_ids() for ix in sources.values()))  # type: ignore[arg-type]
                outs = clip.encode_extensions_many([requests[j][1:] for j in asked], phrase_ids=ids)
                for j, out in zip(asked, outs):
                    totals[j] += out @ chains[requests[j][0]].features[e]
        for k, ch in enumerate(chains):
            ch.state.advance([totals[j] / len(self.clips) for j, r in enumerate(requests) if r[0] == k])

    def _finish(self, ctx: SearchContext, mode: Any, feats: list[Features], tasks: list[list[Task]],
                ready: list[int], fingerprint: str, cut: set[int]) -> Iterator[tuple[int, Result]]:
        """Finish the ready images: score every candidate that needs it in one text batch, keep
        the most similar of each outcome, and build the results."""
        outcomes = [(i, [t.finish() for t in tasks[i]]) for i in ready]
        pairs = [(feats[i], c.prompt) for i, outs in outcomes for o in outs if o.score for c in o.candidates]
        sims = iter(ctx.similarities(pairs))
        for i, outs in outcomes:
            picked = [_pick(o, sims) for o in outs]
            result = self._result(ctx, feats[i], *picked[0], mode.name, mode.uses_caption, fingerprint, outs[0])
            result.caption_truncated = i in cut
            if len(picked) > 1:
                result.negative = self._result(ctx, feats[i], *picked[1], "negative", False, fingerprint, outs[1])
            yield i, result

    def _result(self, ctx: SearchContext, feats: Features, scored: Scored, sim: float | None, mode: str,
                with_caption: bool, fingerprint: str, outcome: Outcome) -> Result:
        from . import __version__

        s = ctx.settings
        for p in [*scored.phrases, *scored.rejected]:
            if p.support is None:  # a mode that scored against other features (style) has set its own
                ctx.mark(p, feats)
        for p in scored.phrases:
            p.weight = emphasis_weight(p.z) if mode != "negative" else 1.0  # type: ignore[arg-type]
        bar = s.floor if s.floor is not None else DEFAULT_FLOOR
        specificity = (sum(ctx.clears_floor(p, feats, below=mode == "negative", floor=bar) for p in scored.phrases)
                       / len(scored.phrases)) if scored.phrases else None
        strength, weak = ctx.weak_match(feats)
        trace = None
        if s.trace:
            top = {c: ctx.top(c, feats, s.trace_top) for c in self.vocab.categories() if c != "negative"}
            for phrases in top.values():
                for p in phrases:
                    ctx.mark(p, feats)
            trace = Trace(outcome.steps, scored.name or None, top)
        return Result(
            prompt=scored.prompt, mode=mode, caption=feats.caption if with_caption else None, similarity=sim,
            clip_model=self.clip_name, caption_model=feats.caption_model if with_caption else None,
            phrases=scored.phrases, source=feats.source, token_count=ctx.count_tokens(scored.prompt),
            match_strength=strength, weak_match=weak, specificity=specificity, rejected=list(scored.rejected),
            chunks=ctx.chunks(scored.prompt) if s.chunks else None,
            fingerprint=fingerprint, version=__version__, trace=trace,
        )

    # -- both stages ---------------------------------------------------------------------------
    def interrogate(self, image: Any, mode: str | None = None, caption: str | None = None, *,
                    negative: bool | None = None, settings: SearchSettings | None = None) -> Result:
        """Interrogate one PIL image. ``caption`` skips the captioner; ``negative`` adds the
        paired negative prompt (``result.negative``); ``mode`` and ``negative`` override ``settings``."""
        return next(self.interrogate_batch([image], mode, captions=[caption], negative=negative,
                                           settings=settings))

    def interrogate_batch(self, images: Sequence[Any], mode: str | None = None,
                          captions: Sequence[str | None] | None = None,
                          sources: Sequence[str | None] | None = None, *, negative: bool | None = None,
                          settings: SearchSettings | None = None) -> Iterator[Result]:
        """Encode and search several images; results are yielded in input order, each as soon
        as it and every one before it are done. Arguments are checked at the call."""
        settings = settings or SearchSettings()
        changes = {k: v for k, v in (("mode", mode), ("negative", negative)) if v is not None}
        settings = settings.replace(**changes) if changes else settings
        get_mode(settings.mode)
        n = len(images)
        caps, srcs = _per_image(captions, n, "captions"), _per_image(sources, n, "sources")
        return self._interrogate_batch(images, caps, srcs, settings)

    def _interrogate_batch(self, images: Sequence[Any], caps: list[str | None], srcs: list[str | None],
                           settings: SearchSettings) -> Iterator[Result]:
        feats = self.encode(images, caps, sources=srcs, generate_captions=self.needs_caption(settings))
        done: dict[int, Result] = {}
        next_up = 0
        for i, result in self.search_indexed(feats, settings):
            done[i] = result
            while next_up in done:
                yield done.pop(next_up)
                next_up += 1

    # -- analysis ---------------------------------------------------------------------------
    def analyze(self, image: Any, top_n: int = 5, caption: str | None = None,
                source: str | None = None) -> Analysis:
        """The top ``top_n`` phrases of every category, with scores."""
        feats = self.encode([image], [caption], sources=[source], generate_captions=False)[0]
        return self.analyze_features(feats, top_n)

    def analyze_features(self, feats: Features, top_n: int = 5) -> Analysis:
        ctx = SearchContext(self, SearchSettings())
        cats = {c: ctx.top(c, feats, top_n) for c in self.vocab.categories() if c != "negative"}
        for phrases in cats.values():
            for p in phrases:
                ctx.mark(p, feats)
        strength, weak = ctx.weak_match(feats)
        floor = ctx.settings.floor if ctx.settings.floor is not None else DEFAULT_FLOOR
        return Analysis(cats, self.clip_name, feats.caption, feats.source, match_strength=strength,
                        weak_match=weak, floor=floor)


def _pick(outcome: Outcome, sims: Iterator[float]) -> tuple[Scored, float | None]:
    """The outcome's candidate to keep: the most similar (the earlier on ties), or its only one."""
    if not outcome.score:
        return outcome.candidates[0], outcome.similarity
    values = [next(sims) for _ in outcome.candidates]
    best = int(np.argmax(values))
    return outcome.candidates[best], float(values[best])


def _per_image(values: Sequence[Any] | None, n: int, what: str) -> list[Any]:
    if values is None:
        return [None] * n
    out = list(values)
    if len(out) != n:
        raise ValueError(f"{len(out)} {what} given for {n} images")
    return out
