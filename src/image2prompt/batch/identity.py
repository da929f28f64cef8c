"""The resume key of a batch run before any model is loaded.

:meth:`Interrogator.fingerprint` needs a loaded interrogator, but a resumed run must
know what is done *before* it loads one (a run whose inputs are all done loads no
model). :func:`predict_fingerprint` computes the same hash from the names alone: each
CLIP model's cache key (a local folder's includes a fingerprint of its weights, read
from the file sizes and times, not the weights), the captioner's name and the
vocabulary tables' hashes. The batch engine checks the prediction against the loaded
interrogator and uses the real fingerprint if they differ (a prediction can only cost
work, never skip an input wrongly: records are only ever written under the real one,
or under the prediction before any model ran).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..models._registry import captioner_plugin, clip_plugin, parse_caption_name, parse_clip_name
from ..settings import SearchSettings, search_fingerprint
from ..vocab import load_vocabulary

if TYPE_CHECKING:  # pragma: no cover
    from ..interrogator import Config

__all__ = ["predict_fingerprint"]

log = logging.getLogger(__name__)


def predict_fingerprint(config: Config, settings: SearchSettings) -> str | None:
    """What ``Interrogator.load(config).fingerprint(settings)`` will return, or None when it
    cannot be told without loading (a plugin model, whose identity only it knows)."""
    keys: list[str] = []
    for name in config.clip_models:
        if clip_plugin(name.strip()) is not None:
            return None
        keys.append(parse_clip_name(name).cache_key)
    captioner = config.captioner
    caption_name: str | None = None
    if captioner is not None:
        if captioner_plugin(captioner.strip()) is not None:
            return None
        caption_name = parse_caption_name(captioner).name
    vocab = load_vocabulary(config.vocab)
    identity = {name: table.sha256 for name, table in vocab.tables.items()}
    return search_fingerprint(settings, clip=keys, captioner=caption_name, vocab=identity)
