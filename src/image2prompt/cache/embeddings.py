"""Embedding cache: one safetensors file per (model, table), in the reference's format.

The reference's own lists (canonical tables: the classic pack, the standard trendings) keep its file names,
``{model with '/' and '@' -> '_'}_{table}.safetensors``, so caches written by ``clip-interrogator`` and its precomputed
files are reused and vice versa. Every other table's file is ``{model}_{table}_{sha256[:16]}.safetensors``, so switching
vocabularies never overwrites another vocabulary's file. Files hold ``embeds`` (fp16 [N, D]) and ``hash`` (int8 codes
of the sha256 hex digest of the labels joined with ","); they are validated on every read and written atomically. Ours
add each label's token ids, and ``i2p_quick_gelu`` when the model was built with the QuickGELU its weights were
trained with (the reference ignores both).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CacheError
from ..hub import hub_offline, hub_reachable
from ..vocab.tables import PhraseTable

log = logging.getLogger(__name__)

#: Where the reference publishes precomputed table embeddings.
PRECOMPUTED_REPO = "pharma/ci-preprocess"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

#: Hex digits of a table's label hash in the file name of a table that is not the reference's.
HASH_CHARS = 16


def default_cache_dir() -> Path:
    """``$IMAGE2PROMPT_CACHE_DIR``, else the per-user cache directory (never the working directory)."""
    env = os.environ.get("IMAGE2PROMPT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("image2prompt", appauthor=False)) / "embeddings"


def sanitize_model_name(model_name: str) -> str:
    """The reference's file-name rule ('/' and '@' -> '_'), plus any other unsafe character."""
    return _UNSAFE.sub("_", model_name.replace("/", "_").replace("@", "_"))


def hash_codes(sha256_hex: str) -> np.ndarray:
    return np.frombuffer(sha256_hex.encode("ascii"), dtype=np.uint8).astype(np.int8)


def _published(model_key: str) -> bool:
    """Whether the reference could have published tables for this model: named open_clip
    models (``ARCH/TAG``) only, never local folders (``local_...``) or hub schemes."""
    return "/" in model_key and ":" not in model_key and not model_key.startswith("local_")


@dataclass(frozen=True)
class CachedTable:
    embeds: np.ndarray  # fp16 [N, D]
    token_ids: list[list[int]] | None  # per label, when the file carries them (ours do; the reference's don't)


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    size_bytes: int


class EmbeddingCache:
    """Reads and writes table embeddings under one directory.

    Safe to share between threads and processes: reads never see a partial file
    because writes go to a temporary file that is fsynced and then renamed.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, download: bool = True) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self.download = download

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.directory)!r})"

    def path_for(self, model_key: str, table: PhraseTable) -> Path:
        """The table's file: the reference's name for a canonical table, else one with its label hash."""
        stem = f"{sanitize_model_name(model_key)}_{_UNSAFE.sub('_', table.name)}"
        if not table.canonical:
            stem += f"_{table.sha256[:HASH_CHARS]}"
        return self.directory / f"{stem}.safetensors"

    def file_in_the_way(self) -> Path | None:
        """The file that stands where the cache folder (or one of the folders above it) should be."""
        for p in (self.directory, *self.directory.parents):
            if p.exists():
                return None if p.is_dir() else p
        return None

    def check(self) -> None:
        """Raise :class:`CacheError` if the cache folder can never be created: a file is in its place."""
        blocker = self.file_in_the_way()
        if blocker is None:
            return
        where = "this is a file" if blocker == self.directory else f"{blocker} is a file"
        raise CacheError(f"{self.directory}: the embedding cache must be a folder, but {where}; "
                         "pass --cache-dir to use another folder")

    # -- reading -----------------------------------------------------------
    def load(self, model_key: str, table: PhraseTable, *, dim: int | None = None,
             quick_gelu: bool = False) -> np.ndarray | None:
        """Return fp16 embeddings [len(table), D] for ``table``, or None if absent or invalid."""
        cached = self.load_table(model_key, table, dim=dim, quick_gelu=quick_gelu)
        return cached.embeds if cached is not None else None

    def load_table(self, model_key: str, table: PhraseTable, *, dim: int | None = None,
                   quick_gelu: bool = False) -> CachedTable | None:
        """Embeddings and, when stored, token ids for ``table``; None if absent or invalid.

        ``quick_gelu``: the model is built with QuickGELU where open_clip 2.29 and later build GELU
        (``ClipEncoder.quick_gelu_forced``); a file of ours without the mark was computed with GELU and is stale (the
        reference's files, which carry no token ids, cannot be told apart and are read as they are). An invalid file
        is reported in one warning that says why (another vocabulary list, another model, a damaged file, the wrong
        activation); the caller recomputes and overwrites it.
        """
        path = self.path_for(model_key, table)
        if not path.exists() and self.download and table.canonical and _published(model_key):
            self._try_download(path)  # only the reference's own lists, for named models, are published
        if not path.exists():
            return None
        cached = self._read_valid(path, table, dim, quick_gelu)
        if isinstance(cached, str):
            log.warning("embedding cache file %s %s; recomputing it", path, cached)
            return None
        return cached

    def _read_valid(self, path: Path, table: PhraseTable, dim: int | None,
                    quick_gelu: bool = False) -> CachedTable | str:
        """The file's embeddings for ``table``, or why they cannot be used (a phrase for the warning)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(path))
        except OSError as e:
            return f"is unreadable ({e.strerror or type(e).__name__})"
        except (SafetensorError, ValueError, RuntimeError) as e:
            detail = str(e).replace("Error while deserializing header: ", "").split(":")[0].strip()
            return f"is corrupt (not a complete safetensors file{': ' + detail if detail else ''})"
        embeds, stored = tensors.get("embeds"), tensors.get("hash")
        if embeds is None or stored is None:
            return f"is corrupt (no {'embeds' if embeds is None else 'hash'} tensor)"
        if embeds.ndim != 2 or stored.shape != (64,):
            return "is corrupt (its tensors have the wrong shape)"
        if not np.issubdtype(embeds.dtype, np.floating) or not np.isfinite(embeds).all():
            return "is corrupt (its embeddings are not all finite numbers)"
        mark = tensors.get("i2p_quick_gelu")
        marked = mark is not None and bool(mark.size) and bool(mark.reshape(-1)[0])
        if quick_gelu and "token_ids" in tensors and not marked:  # ours: the reference writes no token ids
            return ("was computed with GELU, but this model's weights were trained with QuickGELU "
                    "(an earlier image2prompt, or open_clip 2.29 and later, built it so)")
        if dim is not None and embeds.shape[1] != dim:
            return (f"was written by another model (embeddings of size {embeds.shape[1]}, "
                    f"this model's are {dim})")
        if np.array_equal(stored, hash_codes(table.sha256)):
            if embeds.shape[0] != len(table):
                return f"is corrupt ({embeds.shape[0]} rows for {len(table)} labels)"
            return CachedTable(embeds.astype(np.float16, copy=False), _unpack_ids(tensors, len(table)))
        src = table.source
        if src is not None and np.array_equal(stored, hash_codes(src.sha256)):
            # A file keyed by the reference's raw list (blank lines and duplicates kept).
            if embeds.shape[0] != src.size:
                return f"is corrupt ({embeds.shape[0]} rows for {src.size} labels)"
            return CachedTable(embeds[list(src.rows)].astype(np.float16, copy=False), None)
        return "was built for another vocabulary list"

    def _try_download(self, path: Path) -> None:
        """Fetch the reference's precomputed file; any failure means 'compute it instead'.

        Only named open_clip models (``ARCH/TAG``) have published files, and the Hub is
        probed once first, so an unreachable Hub costs seconds, not a minute of retries per table.
        """
        if hub_offline() or not hub_reachable():
            return
        try:
            from huggingface_hub import hf_hub_download

            self.directory.mkdir(parents=True, exist_ok=True)
            hf_hub_download(PRECOMPUTED_REPO, path.name, local_dir=str(self.directory))
            log.info("downloaded precomputed embeddings %s", path.name)
        except Exception as e:  # noqa: BLE001 - any failure falls back to computing locally
            log.info("no precomputed embeddings for %s (%s); computing them", path.name, type(e).__name__)

    # -- writing -----------------------------------------------------------
    def save(self, model_key: str, table: PhraseTable, embeds: np.ndarray,
             token_ids: list[list[int]] | None = None, *, quick_gelu: bool = False) -> Path:
        """Write ``embeds`` (and optionally each label's token ids) for ``table`` atomically.

        Token ids go in two extra tensors that the reference ignores, so the file stays readable by clip-interrogator.
        """
        from safetensors.numpy import save

        if embeds.ndim != 2 or embeds.shape[0] != len(table):
            raise ValueError(f"embeds shape {embeds.shape} does not match table {table.name!r} ({len(table)} labels)")
        path = self.path_for(model_key, table)
        tensors = {"embeds": np.ascontiguousarray(embeds, dtype=np.float16), "hash": hash_codes(table.sha256)}
        if quick_gelu:  # see load_table
            tensors["i2p_quick_gelu"] = np.ones(1, dtype=np.int8)
        if token_ids is not None:
            if len(token_ids) != len(table):
                raise ValueError(f"{len(token_ids)} token-id lists for {len(table)} labels")
            tensors["token_offsets"] = np.cumsum([0] + [len(t) for t in token_ids]).astype(np.int64)
            tensors["token_ids"] = np.fromiter((i for t in token_ids for i in t), dtype=np.int32)
        payload = save(tensors)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.directory)
        except OSError as e:
            self.check()  # a file where the folder should be: say so, not "File exists"
            raise CacheError(f"{self.directory}: cannot write the embedding cache ({e.strerror or e}); "
                             "pass --cache-dir to use another folder") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.directory)
        return path

    # -- housekeeping ------------------------------------------------------
    def entries(self) -> Iterator[CacheEntry]:
        if not self.directory.is_dir():
            return
        for p in sorted(self.directory.glob("*.safetensors")):
            yield CacheEntry(p, p.stat().st_size)

    def clear(self) -> int:
        """Delete every cached table; return how many files were removed."""
        entries = list(self.entries())
        for entry in entries:
            entry.path.unlink(missing_ok=True)
        return len(entries)


def _unpack_ids(tensors: dict[str, np.ndarray], n: int) -> list[list[int]] | None:
    offsets, flat = tensors.get("token_offsets"), tensors.get("token_ids")
    if offsets is None or flat is None or offsets.shape != (n + 1,) or offsets[-1] != flat.shape[0]:
        return None
    if n and (offsets[0] != 0 or np.any(np.diff(offsets) < 0)):
        return None
    values = flat.tolist()
    return [values[a:b] for a, b in itertools.pairwise(offsets.tolist())]


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
