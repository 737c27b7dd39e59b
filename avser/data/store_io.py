"""Durable files and the single writer of a store folder (``avser.data.store``).

A file is written under a temporary name, fsynced, renamed over its final
name and the folder fsynced: after a crash (or a power loss) the final name
holds either the old content or the complete new one, never a torn file. The
temporary files of a writer that died are removed by the next writer, once it
holds the lock (before that they may be another live writer's).

The lock is ``flock`` on a file in the folder: the kernel drops it when its
process dies, so a killed run never leaves the store locked.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from avser.errors import AvserError

LOCK_FILE = ".writer.lock"
TMP_SUFFIX = ".tmp"
TMP_GLOB = f".*{TMP_SUFFIX}"


class StoreLockedError(AvserError):
    """Another process is writing the store."""


def fsync_dir(folder: Path) -> None:
    """Make the folder's entries (a rename, a new or removed file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` writes the content; it becomes ``path`` only once complete and on disk."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    # A hidden name: part globs never see it, and TMP_GLOB finds it after a crash.
    tmp = folder / f".{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    try:
        write(tmp)
        fsync_file(tmp)  # the bytes are on disk before any name points at them
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(folder)  # and the rename itself survives a crash
    return path


def remove_durably(path: Path) -> None:
    path.unlink()
    fsync_dir(path.parent)


def clean_temp_files(folder: Path) -> list[Path]:
    """Remove the temporary files an interrupted writer left (call with the lock held)."""
    stale = sorted(folder.glob(TMP_GLOB))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text().strip()
    except OSError:
        text = ""
    return text or "unknown process"


@contextmanager
def writer_lock(folder: str | Path, what: str = "store") -> Iterator[Path]:
    """Hold ``folder`` as its only writer, or raise :class:`StoreLockedError` at once."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreLockedError(
                f"{what} {folder} is being written by another run ({_holder(lock_path)}, "
                f"lock file {lock_path}); wait for it to finish or stop it, then run again"
            ) from None
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
        yield folder
    finally:
        # Closing drops the lock; the file stays, so a waiting writer never
        # locks a file that is about to be unlinked.
        os.close(fd)
