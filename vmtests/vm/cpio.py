"""Write ``newc`` cpio archives, the format the kernel unpacks as an initramfs.

Written by hand because the per-boot archive (the working tree plus the command to run) is
built at every VM start and must cost milliseconds, must be reproducible (fixed mtimes and
owners), and must not depend on which cpio binary the host has. The kernel accepts several
archives concatenated, so the cached base initramfs and this per-boot one are simply joined.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member. ``data`` is the file content, or the link target for a symlink."""

    name: str
    mode: int
    data: bytes = b""

    @classmethod
    def directory(cls, name: str, perm: int = 0o755) -> Entry:
        return cls(name, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> Entry:
        return cls(name, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> Entry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, entry: Entry, mtime: int) -> bytes:
    name = entry.name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, mtime, len(entry.data), 0, 0, 0, 0, len(name), 0)
    head = _MAGIC + b"".join(b"%08X" % f for f in fields) + name
    return head + _pad4(len(head))


def _with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """Insert missing parent directories: the kernel's unpacker does not create them."""
    seen: set[str] = set()
    out: list[Entry] = []
    for entry in entries:
        parts = entry.name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in seen:
                seen.add(parent)
                out.append(Entry.directory(parent))
        if stat.S_ISDIR(entry.mode):
            if entry.name in seen:
                continue
            seen.add(entry.name)
        out.append(entry)
    return out


def archive(entries: Iterable[Entry], *, mtime: int = 0) -> bytes:
    """Serialise entries with a trailer, parents created first. Owners are always root."""
    out = bytearray()
    ino = 1
    for entry in [*_with_parents(entries), Entry(_TRAILER, 0)]:
        out += _header(ino, entry, mtime)
        out += entry.data + _pad4(len(entry.data))
        ino += 1
    return bytes(out)


def tree(root: Path, prefix: str, *, skip: frozenset[str] = frozenset()) -> list[Entry]:
    """Entries for a directory tree placed at ``prefix``, directories before their contents.

    Names in ``skip`` (e.g. ``__pycache__``) are left out wherever they occur.
    """
    entries = [Entry.directory(prefix)]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        rel = os.path.relpath(dirpath, root)
        base = prefix if rel == "." else f"{prefix}/{rel}"
        for d in dirnames:
            entries.append(Entry.directory(f"{base}/{d}"))
        for f in sorted(filenames):
            if f in skip:
                continue
            path = Path(dirpath, f)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                entries.append(Entry.symlink(f"{base}/{f}", os.readlink(path)))
            elif stat.S_ISREG(st.st_mode):
                entries.append(Entry.file(f"{base}/{f}", path.read_bytes(), st.st_mode & 0o777))
    return entries


__all__ = ["Entry", "archive", "tree"]
