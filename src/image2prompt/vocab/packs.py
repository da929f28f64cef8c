"""Vocabulary packs: named groups of phrase tables.

The default ``classic`` pack is the reference's own lists, read from the installed
``clip-interrogator`` distribution through :mod:`importlib.metadata` (the module
itself is never imported, and the files are never copied into this project).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import VocabularyError
from .tables import PhraseTable

log = logging.getLogger(__name__)

REFERENCE_DISTRIBUTION = "clip-interrogator"

#: The 18 sites the reference expands into its ``trendings`` table.
TRENDING_SITES: tuple[str, ...] = (
    "Artstation", "behance", "cg society", "cgsociety", "deviantart", "dribble",
    "flickr", "instagram", "pexels", "pinterest", "pixabay", "pixiv", "polycount",
    "reddit", "shutterstock", "tumblr", "unsplash", "zbrush central",
)

#: Categories that the fast and best modes merge, in the reference's order.
MERGED_CATEGORIES: tuple[str, ...] = ("artists", "flavors", "mediums", "movements", "trendings")

#: Categories whose phrases name a person: shown as hypotheses, never as facts.
HYPOTHESIS_CATEGORIES: frozenset[str] = frozenset({"artists"})


def expand_artists(names: Iterable[str]) -> list[str]:
    names = list(names)
    return [f"by {a}" for a in names] + [f"inspired by {a}" for a in names]


def expand_trending(sites: Iterable[str]) -> list[str]:
    sites = list(sites)
    return [form.format(s) for form in ("{}", "trending on {}", "featured on {}", "{} contest winner") for s in sites]


def read_list(path: str | os.PathLike[str]) -> list[str]:
    """Read one phrase per line exactly as the reference does (stripped, raw)."""
    p = Path(path)
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            return [line.strip() for line in f.readlines()]
    except FileNotFoundError:
        raise VocabularyError(f"{p}: vocabulary list not found") from None
    except IsADirectoryError:
        raise VocabularyError(f"{p}: expected a .txt list, found a folder") from None
    except OSError as e:
        raise VocabularyError(f"{p}: cannot read vocabulary list ({e.strerror or e})") from None


@dataclass(frozen=True)
class VocabularyPack:
    """An ordered mapping of category name to :class:`PhraseTable`."""

    name: str
    tables: Mapping[str, PhraseTable]

    def __getitem__(self, category: str) -> PhraseTable:
        try:
            return self.tables[category]
        except KeyError:
            raise VocabularyError(f"vocabulary pack {self.name!r} has no {category!r} list "
                                  f"(it has: {', '.join(self.tables) or 'nothing'})") from None

    def __contains__(self, category: object) -> bool:
        return category in self.tables

    def __iter__(self) -> Iterator[str]:
        return iter(self.tables)

    def categories(self) -> list[str]:
        return list(self.tables)

    def merged_categories(self) -> list[str]:
        """Categories fast/best modes draw from: the reference's five, then any extra user lists."""
        base = [c for c in MERGED_CATEGORIES if c in self.tables]
        extra = [c for c in self.tables if c not in MERGED_CATEGORIES and c != "negative"]
        return base + extra

    def with_table(self, table: PhraseTable) -> VocabularyPack:
        return VocabularyPack(self.name, {**self.tables, table.name: table})


def _table_for_file(category: str, path: Path) -> PhraseTable:
    lines = read_list(path)
    # Artist lists hold bare names; the table holds "by X" and "inspired by X".
    return PhraseTable.from_lines(category, expand_artists(lines) if category == "artists" else lines)


def load_folder_pack(folder: str | os.PathLike[str], name: str | None = None) -> VocabularyPack:
    """Read a folder of ``<category>.txt`` lists, laid out like the reference's data folder.

    ``artists.txt`` holds bare names and is expanded; the ``trendings`` table is the
    standard 18-site expansion unless the folder has its own ``trendings.txt``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VocabularyError(f"{folder}: vocabulary folder not found")
    files = sorted(p for p in folder.glob("*.txt") if not p.name.startswith("."))
    if not files:
        raise VocabularyError(f"{folder}: no <category>.txt lists in this folder")
    tables = {path.stem: _table_for_file(path.stem, path) for path in files}
    if "trendings" not in tables and "flavors" in tables:
        # The reference's own trendings list, the same in every pack: its cache file is shared.
        tables["trendings"] = PhraseTable.from_lines("trendings", expand_trending(TRENDING_SITES), canonical=True)
    order = ("artists", "flavors", "mediums", "movements", "trendings", "negative")
    ordered = {c: tables[c] for c in order if c in tables}
    ordered.update({c: t for c, t in tables.items() if c not in ordered})
    return VocabularyPack(name or folder.name, ordered)


def reference_data_dir() -> Path:
    """Where the installed ``clip-interrogator`` keeps its lists, found without importing it."""
    try:
        dist = importlib.metadata.distribution(REFERENCE_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise VocabularyError("the default 'classic' vocabulary comes from the clip-interrogator package, "
                              "which is not installed: pip install clip-interrogator (or pass --vocab FOLDER)") from None
    for f in dist.files or ():
        if f.name == "flavors.txt" and f.parent.name == "data":
            return Path(str(dist.locate_file(f))).parent
    raise VocabularyError(f"clip-interrogator {dist.version} is installed but ships no data/flavors.txt; "
                          "reinstall it or pass --vocab FOLDER")


def load_classic_pack() -> VocabularyPack:
    """The reference's vocabulary: artists, flavors, mediums, movements, trendings, negative.

    Its tables are marked canonical, so their cache files keep the reference's names.
    """
    pack = load_folder_pack(reference_data_dir(), name="classic")
    return VocabularyPack(pack.name, {c: replace(t, canonical=True) for c, t in pack.tables.items()})


STYLE_PACK_DIR = Path(__file__).resolve().parent.parent / "data" / "style"


def load_style_pack() -> VocabularyPack:
    """This project's own style-only vocabulary (see data/style/README.md)."""
    return load_folder_pack(STYLE_PACK_DIR, name="style")


def load_vocabulary(paths: Iterable[str | os.PathLike[str]] = ()) -> VocabularyPack:
    """Resolve ``--vocab`` arguments: a folder replaces the pack, a .txt file adds a category.

    With no folder given, single lists are added to the classic pack.
    """
    given = [Path(p) for p in paths]
    for p in given:
        if not p.exists():
            raise VocabularyError(f"{p}: vocabulary folder or list not found")
    folders = [p for p in given if p.is_dir()]
    files = [p for p in given if not p.is_dir()]
    if len(folders) > 1:
        raise VocabularyError(f"only one vocabulary folder can be used at a time (got {', '.join(map(str, folders))})")
    pack = load_folder_pack(folders[0]) if folders else load_classic_pack()
    for f in files:
        if f.suffix.lower() != ".txt":
            raise VocabularyError(f"{f}: a vocabulary list must be a .txt file (or pass a folder)")
        pack = pack.with_table(_table_for_file(f.stem, f))
    for table in pack.tables.values():
        if not table.labels:
            log.warning("vocabulary list %r in pack %r is empty", table.name, pack.name)
    return pack
