"""What every output file needs, whatever its format: one writer at a time (a lock), a torn
last line cut off, and files rewritten atomically (a temporary file beside, fsynced, moved into place)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .schema import OutputError

log = logging.getLogger(__package__)


def lock_output(path: Path) -> IO[bytes]:
    """An exclusive lock on ``FILE.lock`` for as long as the writer is open. The kernel drops it
    when the process ends, even after ``kill -9``, so a stale lock file never blocks a rerun.
    The lock file sits beside the real file (links in its path resolved), so two runs that name
    the same output through a linked folder or a link to the file share one lock."""
    real = Path(os.path.realpath(path))
    lock = open(real.with_name(real.name + ".lock"), "ab")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return lock
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise OutputError(f"{path}: another run is writing this output; wait for it to end, "
                          "or pass another --output") from None
    return lock


def repair_tail(file: Path) -> None:
    """Cut a torn last line (a crash in the middle of a write) back to the last newline."""
    if not file.exists():
        return
    size = file.stat().st_size
    if size == 0:
        return
    with open(file, "r+b") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        pos, chunk = size, 1 << 16
        cut = 0
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            data = f.read(pos - start)
            at = data.rfind(b"\n")
            if at >= 0:
                cut = start + at + 1
                break
            pos = start
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    log.warning("%s: cut off a torn last line (%d bytes) left by an interrupted run", file, size - cut)


def temp_beside(target: Path) -> Path:
    """The temporary file a rewrite of ``target`` goes to first: ``.NAME.tmp`` beside it."""
    return target.with_name(f".{target.name}.tmp")


@contextmanager
def synced(path: Path) -> Iterator[IO[bytes]]:
    """``path`` opened for writing, flushed and fsynced when the block ends without an error."""
    with open(path, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def fsync_path(path: Path) -> None:
    """fsync a file written by someone else (pyarrow)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def replace(tmp: Path, target: Path, *, sync_dir: bool) -> None:
    """Move a finished temporary file into place (and fsync the folder, when ``sync_dir``)."""
    os.replace(tmp, target)
    if sync_dir:
        fsync_dir(target.parent)


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so a rename or removal in it survives a crash (where the platform can)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
