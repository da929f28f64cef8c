"""The stages of a Ray batch run (drawn in :mod:`.driver`), each a thin executor over the library's own parts:
:func:`input_rows` on the driver, :func:`decode_batch` in CPU tasks (read, key, drop what the output already holds:
:class:`DoneSet`), :class:`Encoder` and :class:`Searcher` in actor pools (:mod:`image2prompt.work`).

Every actor checks that it loaded the run's model identity (computed once, on the driver), and labels its records
with the run's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ImageLoadError, one_line
from ...io import DEFAULT_MAX_PIXELS, ImageSource, load_image
from ...settings import SearchSettings
from ...work import Failure, WorkItem, encode_items, reason, search_items
from ..inputs import iter_inputs, read_file
from ..records import json_default, make_record, read_records
from ..sink import Entry, finish_result, input_key, read_input, same_source

if TYPE_CHECKING:  # pragma: no cover
    from ...features import Features
    from ...identity import ModelIdentity
    from ...interrogator import Config, Interrogator

log = logging.getLogger(__name__)

# Input rows per block: blocks are the unit of parallelism of the decode tasks.
_MAX_BLOCK_ROWS = 1024
_BLOCKS_PER_CPU = 4
# One pixel stands in for the image of rows that have none (errors, copies).
_NO_IMAGE = np.zeros((1, 1, 3), np.uint8)

KIND_IMAGE, KIND_ERROR, KIND_COPY = "image", "error", "copy"


def input_rows(inputs: Sequence[str], *, allow_urls: bool, column: str | None,
               caption_column: str | None = None, reached: set[str] | None = None) -> tuple[list[Any], int]:
    """Arrow tables of input rows (no image bytes read, except shard members) and their count.

    ``path`` is the local image file (read there in the task, and where a caption file goes); ``reader`` the pickled
    ``read`` function of any other item (a URL, a shard member); ``caption`` the caption the input came with (with
    ``caption_column``), else null. ``reached`` gets each input's source (and manifest row), as a retry compares
    them.
    """
    import pyarrow as pa
    from ray import cloudpickle

    columns: dict[str, list[Any]] = {"source": [], "path": [], "reader": [], "error": [], "caption": []}
    for item in iter_inputs(inputs, allow_urls=allow_urls, column=column, caption_column=caption_column):
        if reached is not None:
            reached.update(same_source(s) for s in (item.source, item.origin) if s)
        columns["source"].append(item.source)
        columns["caption"].append(item.caption if caption_column is not None else None)
        columns["path"].append(str(item.path) if item.path is not None else None)
        columns["error"].append(one_line(item.error) if item.error is not None else None)
        local = item.error is not None or item.path is not None
        columns["reader"].append(None if local else cloudpickle.dumps(item.read))
    n = len(columns["source"])
    if not n:
        return [], 0
    table = pa.table({k: pa.array(v, pa.binary() if k == "reader" else pa.string()) for k, v in columns.items()})
    try:
        import ray

        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    except Exception:  # noqa: BLE001  only a sizing hint
        cpus = 1
    rows = max(1, min(_MAX_BLOCK_ROWS, math.ceil(n / (cpus * _BLOCKS_PER_CPU))))
    return [table.slice(start, rows) for start in range(0, n, rows)], n



def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest().encode("ascii")


class DoneSet:
    """What the output holds under this run's fingerprint, as sorted 128-bit digests.

    ``keys``: record keys (content hash, or source for records without one); ``sources``: the sources with a record.
    Digest arrays are plain numpy (zero-copy from Ray's object store in every task), about 32 bytes a record.
    """

    def __init__(self, keys: np.ndarray, sources: np.ndarray) -> None:
        self.keys, self.sources = keys, sources

    @property
    def size(self) -> int:
        return int(self.keys.size)

    @classmethod
    def build(cls, output: str, fmt: str | None, done_keys: set[tuple[str, str]], fingerprint: str) -> DoneSet:
        keys = sorted({_digest(k) for k, fp in done_keys if fp == fingerprint})
        sources = sorted({_digest(str(r.get("source") or "")) for r in read_records(output, fmt)
                          if r.get("fingerprint") == fingerprint})
        return cls(np.array(keys, dtype="S32"), np.array(sources, dtype="S32"))

    @staticmethod
    def _has(table: np.ndarray, key: str) -> bool:
        if table.size == 0:
            return False
        d = _digest(key)
        at = int(np.searchsorted(table, d))
        return at < table.size and table[at] == d

    def has_key(self, key: str) -> bool:
        return self._has(self.keys, key)

    def has_source(self, source: str) -> bool:
        return self._has(self.sources, source)



def decode_batch(batch: dict[str, np.ndarray], *, done: Any = None,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Input rows -> image, error or copy rows; rows already done are dropped."""
    import ray
    from ray import cloudpickle

    if done is not None and not isinstance(done, DoneSet):  # an ObjectRef: fetched once per task
        done = ray.get(done)
    names = ("kind", "source", "path", "content_hash", "error", "caption", "image")
    out: dict[str, list[Any]] = {k: [] for k in names}
    caption: str | None = None

    def emit(kind: str, source: str, path: Any, digest: str | None, error: str | None,
             image: np.ndarray = _NO_IMAGE) -> None:
        for k, v in zip(names, (kind, source, path, digest, error, caption, image)):
            out[k].append(v)

    captions = _column(batch, "caption") if "caption" in batch else [None] * len(batch["source"])
    for source, path, reader, error, caption in zip(*(_column(batch, k) for k in ("source", "path", "reader", "error")),
                                                    captions):
        source = str(source)
        data = None
        if error is None:  # read as the batch engine reads
            read = partial(read_file, Path(str(path)), source) if reader is None else cloudpickle.loads(bytes(reader))
            data, error = read_input(source, read)
        if data is None:  # no bytes: keyed by source
            if done is None or not done.has_key(source):
                emit(KIND_ERROR, source, path, None, error)
            continue
        digest = input_key(data, caption)
        if done is not None and done.has_key(digest):
            if not done.has_source(source):
                emit(KIND_COPY, source, path, digest, None)  # same content, new name
            continue
        try:  # as the Runner decodes
            image = np.asarray(load_image(ImageSource(source, "bytes", data), max_pixels=max_pixels), np.uint8)
        except ImageLoadError as err:
            emit(KIND_ERROR, source, path, digest, one_line(err))
            continue
        except Exception as err:
            log.debug("decoding %s failed", source, exc_info=True)
            emit(KIND_ERROR, source, path, digest, f"{source}: could not load ({reason(err)})")
            continue
        emit(KIND_IMAGE, source, path, digest, None, image)
    return _rows(out)


def _column(batch: dict[str, Any], name: str) -> list[Any]:
    """A column as a list, with Arrow's nulls (None or NaN) as None."""
    values = batch[name]
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


def _rows(columns: dict[str, list[Any]]) -> dict[str, Any]:
    """Columns for Ray: strings as object arrays (None kept), images as a list of arrays."""
    out: dict[str, Any] = {}
    for k, v in columns.items():
        if k == "image" or k.startswith("vec_"):
            out[k] = v
        else:
            arr = np.empty(len(v), dtype=object)
            arr[:] = v
            out[k] = arr
    return out



class Encoder:
    """Loads the interrogator once per actor and encodes batches of decoded images."""

    # The models are loaded with the first batch, not in __init__: a run whose inputs are all
    # done loads none, and an error loading them reaches the driver as itself (one line),
    # where Ray reports a failed actor start as a dead actor with a traceback in a string.
    def __init__(self, config: Config, settings: SearchSettings, caption: str | None,
                 identity: ModelIdentity) -> None:
        self.config, self.settings, self.caption, self.identity = config, settings, caption, identity
        self.ic: Interrogator | None = None

    def _load(self) -> Interrogator:
        if self.ic is None:
            from ...interrogator import Interrogator

            ic = Interrogator.load(self.config)
            self.identity.check(ic.identity)
            self.wants = ic.needs_caption(self.settings)  # as the Runner decides
            self.dims = [c.embed_dim for c in ic.clips]
            self.ic = ic
            log.info("encode actor ready: %s", ic.clip_name)
        return self.ic

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from PIL import Image

        ic = self._load()
        kinds, sources = _column(batch, "kind"), _column(batch, "source")
        errors, captions = _column(batch, "error"), _column(batch, "caption")
        images = batch["image"]
        items = []
        for i, kind in enumerate(kinds):
            if kind == KIND_IMAGE:
                caption = captions[i] if captions[i] is not None else self.caption
                items.append(WorkItem(i, str(sources[i]), Image.fromarray(np.asarray(images[i], np.uint8)), caption,
                                      generate=caption is None and self.wants))
        feats: dict[int, Features] = {}
        for item, got in zip(items, encode_items(ic, items)):
            if isinstance(got, Failure):
                kinds[item.index], errors[item.index] = KIND_ERROR, got.text
            else:
                feats[item.index] = got
        n = len(kinds)
        out: dict[str, Any] = _rows({
            "kind": kinds, "source": sources, "path": _column(batch, "path"),
            "content_hash": _column(batch, "content_hash"), "error": errors,
            "caption": [feats[i].caption if i in feats else captions[i] for i in range(n)],
            "caption_model": [feats[i].caption_model if i in feats else None for i in range(n)],
        })
        for e, dim in enumerate(self.dims):
            vec = np.zeros((n, dim), np.float32)
            for i, f in feats.items():
                vec[i] = f.vectors[e]
            out[f"vec_{e}"] = vec
        return out



class Searcher:
    """Holds an interrogator (text towers and tables; no captioner) and searches features."""

    def __init__(self, config: Config, settings: SearchSettings, identity: ModelIdentity, on_gpu: bool,
                 scores_top: int | None, store_features: str | None) -> None:
        changes: dict[str, Any] = {"caption_model": None}
        if not on_gpu:
            changes.update(device="cpu", precision="auto", caption_precision=None, low_vram=False)
        self.config = replace(config, **changes)
        self.settings = settings
        self.identity = identity
        self.fingerprint = identity.fingerprint(settings)
        self.scores_top = scores_top  # --store-scores K: scored after the search
        self.store_features = store_features
        self.ic: Interrogator | None = None  # loaded with the first batch (see Encoder)

    def _load(self) -> Interrogator:
        if self.ic is None:
            from ...interrogator import Interrogator

            ic = Interrogator.load(self.config)
            self.identity.check(ic.identity, captioner=False)  # it loads no captioner: the encoders name it
            ic.prepare()  # embed or load every table before the first search
            self.ic = ic
            log.info("search actor ready: %s", ic.clip_name)
        return self.ic

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from ...features import Features

        ic = self._load()
        kinds, sources = _column(batch, "kind"), _column(batch, "source")
        hashes, errors = _column(batch, "content_hash"), _column(batch, "error")
        paths = _column(batch, "path")
        captions, caption_models = _column(batch, "caption"), _column(batch, "caption_model")
        todo = [i for i, k in enumerate(kinds) if k == KIND_IMAGE]
        vectors = [np.asarray(batch[f"vec_{e}"], np.float32) for e in range(len(ic.clips))]
        keys = ic.encoder_keys
        items = [WorkItem(i, str(sources[i]), caption=captions[i]) for i in todo]
        feats = [Features([v[i] for v in vectors], keys, captions[i], caption_models[i], sources[i]) for i in todo]
        records: list[str | None] = [None] * len(kinds)
        for j, outcome in search_items(ic, items, feats, self.settings, identity=self.identity):
            i = todo[j]
            entry = Entry(str(sources[i]), None, hashes[i])
            if isinstance(outcome, Failure):
                records[i] = _json(make_record(entry.source, entry.content_hash, self.fingerprint, None, outcome.text))
            else:
                records[i] = _json(finish_result(ic, entry, self.fingerprint, outcome, feats[j],
                                                 store=self.store_features, scores_top=self.scores_top))
        for i, kind in enumerate(kinds):
            if kind == KIND_ERROR:
                records[i] = _json(make_record(str(sources[i]), hashes[i], self.fingerprint, None,
                                               errors[i] or f"{sources[i]}: could not interrogate"))
        return _rows({"kind": kinds, "source": sources, "path": paths, "content_hash": hashes, "record": records})


def _json(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, allow_nan=False, default=json_default)
