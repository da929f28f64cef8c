"""Embedding cache (numpy + safetensors; no torch here)."""

from .embeddings import (
    PRECOMPUTED_REPO,
    CachedTable,
    CacheEntry,
    EmbeddingCache,
    default_cache_dir,
    hash_codes,
    sanitize_model_name,
)

__all__ = [
    "PRECOMPUTED_REPO", "CacheEntry", "CachedTable", "EmbeddingCache", "default_cache_dir", "hash_codes",
    "sanitize_model_name",
]
