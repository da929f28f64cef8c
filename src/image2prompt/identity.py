"""What a result depends on besides its settings: the models and the vocabulary.

A :class:`ModelIdentity` names each CLIP encoder (its cache key: a local folder's includes a fingerprint of its
weights, read from the file sizes and times, not the weights), the captioner, and each vocabulary table's hash. The
fingerprint, the resume and micro-batch key, is a function of (settings, identity):
:meth:`ModelIdentity.fingerprint`.

It is computed once per run: from a loaded :class:`~image2prompt.Interrogator`
(:attr:`~image2prompt.Interrogator.identity`), or from a :class:`~image2prompt.interrogator.Config` before any model
is loaded (:meth:`ModelIdentity.of_config`), which is how a batch run knows what is done before it loads a model,
and how every Ray actor labels its records alike. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import Image2PromptError
from .models._registry import captioner_plugin, clip_plugin, parse_caption_name, parse_clip_name
from .models.instructions import INSTRUCTED_KINDS, caption_identity, default_instruction
from .settings import SearchSettings, search_fingerprint, stable_hash
from .vocab import load_vocabulary

if TYPE_CHECKING:  # pragma: no cover
    from .interrogator import Config

__all__ = ["IdentityMismatch", "ModelIdentity"]


class IdentityMismatch(Image2PromptError):
    """Loaded models or vocabulary are not the ones a run is labelled with (a node that sees other weights, a folder
    changed during the run)."""


@dataclass(frozen=True)
class ModelIdentity:
    """The models and vocabulary behind a result (see the module docstring)."""

    clip: tuple[str, ...]
    captioner: str | None
    vocab: tuple[tuple[str, str], ...]  # (table name, sha256), sorted

    @classmethod
    def of(cls, clip: Sequence[str], captioner: str | None, vocab: Mapping[str, str]) -> ModelIdentity:
        return cls(tuple(clip), captioner, tuple(sorted(vocab.items())))

    @classmethod
    def of_config(cls, config: Config) -> ModelIdentity | None:
        """What ``Interrogator.load(config).identity`` will be, from the names alone; None when it cannot be told
        without loading (a plugin model, whose identity only it knows)."""
        keys: list[str] = []
        for name in config.clip_models:
            if clip_plugin(name.strip()) is not None:
                return None
            keys.append(parse_clip_name(name).cache_key)
        caption_name: str | None = None
        if config.captioner is not None:
            if captioner_plugin(config.captioner.strip()) is not None:
                return None
            spec = parse_caption_name(config.captioner)
            caption_name = caption_identity(spec.name, config.caption_prompt or default_instruction(spec.kind)) \
                if spec.kind in INSTRUCTED_KINDS else spec.name
        vocab = load_vocabulary(config.vocab)
        return cls.of(keys, caption_name, {name: table.sha256 for name, table in vocab.tables.items()})

    def fingerprint(self, settings: SearchSettings) -> str:
        """The resume and micro-batch key of ``settings`` with these models and vocabulary."""
        return search_fingerprint(settings, clip=self.clip, captioner=self.captioner, vocab=dict(self.vocab))

    def check(self, loaded: ModelIdentity, *, captioner: bool = True) -> None:
        """Raise :class:`IdentityMismatch` when ``loaded`` (what a process loaded) is not this identity;
        ``captioner=False`` for a process that loads no captioner (it compares the encoders and the vocabulary
        only)."""
        if loaded.clip != self.clip or loaded.vocab != self.vocab or (captioner and loaded.captioner != self.captioner):
            raise IdentityMismatch(
                f"the loaded models or vocabulary ({loaded.describe()}) are not the run's ({self.describe()}): "
                "every process must see the same weights, vocabulary and image2prompt version")

    def describe(self) -> str:
        return f"clip {' + '.join(self.clip)}, captioner {self.captioner or 'none'}, vocabulary {stable_hash(dict(self.vocab))}"
