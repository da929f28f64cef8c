"""Vocabulary: phrase tables and packs (no torch here)."""

from .packs import (
    HYPOTHESIS_CATEGORIES,
    MERGED_CATEGORIES,
    TRENDING_SITES,
    VocabularyPack,
    expand_artists,
    expand_trending,
    load_classic_pack,
    load_folder_pack,
    load_style_pack,
    load_vocabulary,
    reference_data_dir,
)
from .tables import PhraseTable, SourceLayout, clean_labels, labels_sha256

__all__ = [
    "HYPOTHESIS_CATEGORIES", "MERGED_CATEGORIES", "TRENDING_SITES", "PhraseTable", "SourceLayout",
    "VocabularyPack", "clean_labels", "expand_artists", "expand_trending", "labels_sha256",
    "load_classic_pack", "load_folder_pack", "load_style_pack", "load_vocabulary", "reference_data_dir",
]
