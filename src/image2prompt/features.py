"""Image features: the output of :meth:`Interrogator.encode` and the input of ``search``.

A :class:`Features` holds what the search needs of one image and nothing else: its
caption and one L2-normalised vector per CLIP encoder. It can be stored and searched
later, or on another machine, without the image or the captioner:

* ``save(path)`` / ``Features.load(path)``: one safetensors file (no pickle);
* ``features_to_arrow(list)`` / ``features_from_arrow(table)``: an Arrow table with
  one row per image (needs ``pyarrow``), for Parquet files and Ray Data blocks.

No torch here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import Image2PromptError

FORMAT_VERSION = 1


class FeaturesError(Image2PromptError, ValueError):
    """Stored features that cannot be read, or that do not match the loaded encoders."""


@dataclass(eq=False)
class Features:
    """One image's caption and features, one float32 unit vector per encoder."""

    vectors: list[np.ndarray]
    encoders: tuple[str, ...]  # the encoders' cache keys, in the interrogator's order
    caption: str | None = None
    caption_model: str | None = None  # the captioner that wrote the caption; None when it was given
    source: str | None = None

    def __post_init__(self) -> None:
        self.vectors = [np.ascontiguousarray(v, dtype=np.float32).reshape(-1) for v in self.vectors]
        self.encoders = tuple(self.encoders)
        if len(self.vectors) != len(self.encoders):
            raise FeaturesError(f"{len(self.vectors)} vectors for {len(self.encoders)} encoders")

    def __len__(self) -> int:
        return len(self.vectors)

    def __getitem__(self, e: int) -> np.ndarray:
        return self.vectors[e]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.vectors)

    def with_vectors(self, vectors: Sequence[np.ndarray]) -> Features:
        """The same image with other vectors (style mode's projected features)."""
        return Features(list(vectors), self.encoders, self.caption, self.caption_model, self.source)

    def equals(self, other: Features) -> bool:
        return (self.encoders == other.encoders and self.caption == other.caption
                and self.caption_model == other.caption_model and self.source == other.source
                and all(np.array_equal(a, b) for a, b in zip(self.vectors, other.vectors)))

    # -- safetensors ----------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        return {
            "format": "image2prompt.features",
            "version": str(FORMAT_VERSION),
            "encoders": json.dumps(list(self.encoders), ensure_ascii=False),
            "caption": json.dumps(self.caption, ensure_ascii=False),
            "caption_model": json.dumps(self.caption_model, ensure_ascii=False),
            "source": json.dumps(self.source, ensure_ascii=False),
        }

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (safetensors), atomically: a crash never leaves half a file."""
        from safetensors.numpy import save

        path = Path(path)
        payload = save({f"vector.{e}": v for e, v in enumerate(self.vectors)}, metadata=self.metadata())
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> Features:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except FileNotFoundError:
            raise FeaturesError(f"{path}: no such file") from None
        except (SafetensorError, OSError, ValueError) as e:
            raise FeaturesError(f"{path}: not an image2prompt features file ({type(e).__name__})") from None
        if meta.get("format") != "image2prompt.features":
            raise FeaturesError(f"{path}: not an image2prompt features file")
        if int(meta.get("version", "0")) > FORMAT_VERSION:
            raise FeaturesError(f"{path}: written by a newer image2prompt (format {meta.get('version')})")
        try:
            encoders = tuple(json.loads(meta["encoders"]))
            values = {k: json.loads(meta[k]) for k in ("caption", "caption_model", "source")}
        except (KeyError, ValueError):
            raise FeaturesError(f"{path}: damaged metadata") from None
        try:
            vectors = [tensors[f"vector.{e}"] for e in range(len(encoders))]
        except KeyError:
            raise FeaturesError(f"{path}: a vector is missing") from None
        return cls(vectors, encoders, **values)


# -- Arrow ------------------------------------------------------------------------------


def features_to_arrow(items: Sequence[Features]) -> Any:
    """An Arrow table, one row per image: ``source``, ``caption``, ``caption_model``,
    ``encoders`` (list of names) and one ``vector_<e>`` list<float32> column per encoder."""
    try:
        import pyarrow as pa
    except ImportError:
        raise Image2PromptError("storing features as Arrow needs pyarrow: pip install pyarrow") from None
    if not items:
        return pa.table({"source": pa.array([], pa.string())})
    n_enc = len(items[0].encoders)
    if any(len(f.encoders) != n_enc for f in items):
        raise FeaturesError("features from different numbers of encoders cannot share a table")
    columns: dict[str, Any] = {
        "source": pa.array([f.source for f in items], pa.string()),
        "caption": pa.array([f.caption for f in items], pa.string()),
        "caption_model": pa.array([f.caption_model for f in items], pa.string()),
        "encoders": pa.array([list(f.encoders) for f in items], pa.list_(pa.string())),
    }
    for e in range(n_enc):
        dim = items[0].vectors[e].shape[0]
        flat = np.concatenate([f.vectors[e] for f in items]).astype(np.float32)
        columns[f"vector_{e}"] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
    return pa.table(columns, metadata={"format": "image2prompt.features", "version": str(FORMAT_VERSION)})


def features_from_arrow(table: Any) -> list[Features]:
    """The inverse of :func:`features_to_arrow` (also takes a ``pyarrow.RecordBatch``)."""
    names = list(table.schema.names)
    if "encoders" not in names:
        if table.num_rows == 0:
            return []
        raise FeaturesError("this Arrow table has no 'encoders' column: not image2prompt features")
    vec_cols = sorted((c for c in names if c.startswith("vector_")), key=lambda c: int(c.split("_", 1)[1]))
    vectors = []
    for c in vec_cols:
        col = table.column(c)
        chunks = col.chunks if hasattr(col, "chunks") else [col]
        dim = col.type.list_size if hasattr(col.type, "list_size") else None
        parts = [np.asarray(ch.flatten().to_numpy(zero_copy_only=False), np.float32) for ch in chunks]
        flat = np.concatenate(parts) if parts else np.empty(0, np.float32)
        if dim is None:
            dim = flat.size // max(1, table.num_rows)
        vectors.append(flat.reshape(table.num_rows, dim))
    py = {c: table.column(c).to_pylist() for c in ("source", "caption", "caption_model", "encoders")}
    return [Features([v[i] for v in vectors], tuple(py["encoders"][i]), py["caption"][i], py["caption_model"][i],
                     py["source"][i]) for i in range(table.num_rows)]
