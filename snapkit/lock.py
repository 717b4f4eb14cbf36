"""One operation at a time per origin, across processes.

Two snapkit runs on the same origin would interleave suspends, table loads and merges and
corrupt each other's snapshots, so each operation holds an exclusive ``flock`` on a file named
after the origin. The kernel drops the lock when the process dies, so a crash never leaves a
stale lock behind; the file itself stays (unlinking a lock file races with the next locker).

The lock is keyed by device number when the origin is a block device, so ``/dev/vg/lv``,
``/dev/mapper/vg-lv`` and ``/dev/dm-3`` share one lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from snapkit.errors import RefusedError

_SAFE = re.compile(r"[^A-Za-z0-9+_.-]")


class LockedError(RefusedError):
    """Another operation holds the origin's lock."""


def lock_key(origin: str) -> str:
    """A file name for ``origin``: ``block-MAJ-MIN`` for a block device, else name and hash."""
    try:
        st = os.stat(origin)
    except OSError:
        st = None
    if st is not None and stat.S_ISBLK(st.st_mode):
        return f"block-{os.major(st.st_rdev)}-{os.minor(st.st_rdev)}"
    digest = hashlib.sha256(origin.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"name-{_SAFE.sub('_', origin)[-64:]}-{digest}"


@contextmanager
def origin_lock(origin: str, *, operation: str, lock_dir: Path) -> Iterator[Path]:
    """Hold the lock for ``origin`` for the ``with`` block, or raise LockedError at once."""
    lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = lock_dir / f"{lock_key(origin)}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            raise LockedError(
                f"{origin} is busy: {holder} is running on it",
                hint="wait for it to finish, or check that process is still alive",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({operation})\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing drops the flock


__all__ = ["LockedError", "lock_key", "origin_lock"]
