"""``image2prompt cache info`` and ``cache clear``: the embedding cache and the model weights' cache."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import click

from ..cache import EmbeddingCache
from .app import CONTEXT_SETTINGS, FatalError
from .options import cache_dir_callback


@click.group(context_settings=CONTEXT_SETTINGS, short_help="Show or clear the embedding cache.")
def cache() -> None:
    """Show where cached data lives, or clear the cached vocabulary embeddings."""


@cache.command("info")
@click.option("--cache-dir", type=click.Path(), metavar="DIR",
              help="The embedding cache to show (default: the per-user cache).")
def cache_info(cache_dir: str | None) -> None:
    """Show where vocabulary embeddings and model weights are cached, and their sizes.

    Creates nothing."""
    from huggingface_hub import constants

    emb = EmbeddingCache(cache_dir, download=False)
    entries = list(emb.entries())
    total = sum(e.size_bytes for e in entries)
    blocker = emb.file_in_the_way()
    if emb.directory.is_dir():
        state = f"{len(entries)} files, {_size(total)}"
    elif blocker == emb.directory:
        state = "not a directory: this is a file"
    elif blocker is not None:
        state = f"cannot be created: {blocker} is a file"
    else:
        state = "does not exist yet"
    click.echo(f"Vocabulary embeddings: {emb.directory}  ({state})")
    click.echo("  (set IMAGE2PROMPT_CACHE_DIR or pass --cache-dir to move it; `cache clear` empties it)")
    hub = Path(constants.HF_HUB_CACHE)
    state = _size(_tree_size(hub)) if hub.is_dir() else "does not exist yet"
    click.echo(f"Model weights (Hugging Face hub cache, also used by open_clip): {hub}  ({state})")
    click.echo("  (set HF_HOME or HF_HUB_CACHE to move it; manage it with `hf cache` / `huggingface-cli`)")


@cache.command("clear")
@click.option("--cache-dir", type=click.Path(), metavar="DIR", callback=cache_dir_callback,
              help="The embedding cache to use (default: the per-user cache).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(cache_dir: str | None, yes: bool) -> None:
    """Delete the cached vocabulary embeddings (model weights are kept).

    They are recomputed, or downloaded again, the next time they are needed."""
    emb = EmbeddingCache(cache_dir, download=False)
    entries = list(emb.entries())
    if not entries:
        click.echo(f"Nothing to clear in {emb.directory}")
        return
    total = sum(e.size_bytes for e in entries)
    if not yes:
        click.confirm(f"Delete {len(entries)} cached embedding files ({_size(total)}) in {emb.directory}?",
                      abort=True, err=True)
    try:
        removed = emb.clear()
    except OSError as err:
        raise FatalError(f"{emb.directory}: cannot delete cache files ({err.strerror or err})") from None
    click.echo(f"Deleted {removed} files ({_size(total)}) from {emb.directory}")


def _tree_size(root: Path) -> int:
    """Bytes of the regular files under ``root`` (the hub's snapshot symlinks are not counted twice)."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                if not os.path.islink(path):
                    total += os.lstat(path).st_size
    return total


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
