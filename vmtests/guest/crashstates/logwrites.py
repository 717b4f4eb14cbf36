"""dm-log-writes' log, read and replayed (issue 17): the kernel's format, stdlib only.

The format (drivers/md/dm-log-writes.c, Documentation/admin-guide/device-mapper/
log-writes.rst): sector 0 of the log device holds the super (magic, version, nr_entries,
sectorsize); from sector 1 on (in the logged device's sector size), every entry is one sector
-- ``sector, nr_sectors, flags, data_len`` little-endian, then a mark's text -- followed by
``nr_sectors`` sectors of the data written, except for a discard, which carries none.

What the order means (the target's comment): a plain write is logged only once a flush has
made it durable; the writes a flush covers come just before its FLUSH entry, a FUA write is
logged when it completes, and a mark (``dmsetup message LW 0 mark TEXT``) is logged at once,
so it lands after everything already durable. So replaying a prefix that ends at a FLUSH or
FUA entry gives a disk a power cut at that instant can leave, and the plain writes between
two FLUSH entries are exactly those a power cut may have landed in any subset.

fstests' ``replay-log`` is not in Debian; this module is its replay semantics in Python: a
data entry is written at its sector, a discard is replayed as zeroes (what the replay target
reads is then defined), a flush or a mark writes nothing.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

MAGIC = 0x6A736677736872
VERSION = 1
FLUSH, FUA, DISCARD, MARK, METADATA = 1, 2, 4, 8, 16
SUPER = struct.Struct("<QQQI")
ENTRY = struct.Struct("<QQQQ")
ZERO_CHUNK = 1 << 20


class LogError(Exception):
    """The log is not one dm-log-writes wrote, or it ends early."""


@dataclass(frozen=True)
class Entry:
    """One logged entry: ``sector`` and ``nr_sectors`` in the device's sector size; ``data_at``
    is the byte offset of its data in the log (0: it carries none)."""

    index: int
    sector: int
    nr_sectors: int
    flags: int
    data_at: int
    mark: str = ""

    @property
    def is_write(self) -> bool:
        """Changes the disk when replayed: data, or a discard's zeroes."""
        return self.nr_sectors > 0 and not self.flags & MARK

    @property
    def durable_point(self) -> bool:
        """A FLUSH or FUA entry: replaying up to it is a state a cut there leaves."""
        return bool(self.flags & (FLUSH | FUA)) and not self.flags & MARK


@dataclass(frozen=True)
class Log:
    sectorsize: int
    entries: tuple[Entry, ...]

    def marks(self) -> list[tuple[int, str]]:
        return [(e.index, e.mark) for e in self.entries if e.flags & MARK]


def parse_super(raw: bytes) -> tuple[int, int]:
    """(nr_entries, sectorsize) from the log's first sector."""
    if len(raw) < SUPER.size:
        raise LogError("the log is shorter than its super")
    magic, version, nr, sectorsize = SUPER.unpack_from(raw)
    if magic != MAGIC:
        raise LogError(f"not a dm-log-writes log (magic {magic:#x})")
    if version != VERSION:
        raise LogError(f"log version {version}, this replayer reads {VERSION}")
    if sectorsize < ENTRY.size or sectorsize & (sectorsize - 1):
        raise LogError(f"log sector size {sectorsize} is not a power of two")
    return nr, sectorsize


def read(fd: int) -> Log:
    """Every entry of the log open at ``fd`` (headers only; data stays in the log)."""
    nr, ss = parse_super(os.pread(fd, 4096, 0))
    entries = []
    pos = ss
    for index in range(1, nr + 1):  # entry numbers as replay-log prints them
        head = os.pread(fd, ss, pos)
        if len(head) < ENTRY.size:
            raise LogError(f"the log ends inside entry {index} of {nr}")
        sector, nr_sectors, flags, data_len = ENTRY.unpack_from(head)
        mark = ""
        if flags & MARK:
            mark = head[ENTRY.size : ENTRY.size + data_len].decode(errors="replace")
        pos += ss
        data_at = 0
        if nr_sectors and not flags & (DISCARD | MARK):
            data_at = pos
            pos += nr_sectors * ss
        entries.append(Entry(index, sector, nr_sectors, flags, data_at, mark))
    return Log(ss, tuple(entries))


def apply(log: Log, log_fd: int, dev_fd: int, entries: Iterable[Entry]) -> int:
    """Write ``entries`` (in the order given) to the device at ``dev_fd``; bytes written."""
    ss = log.sectorsize
    total = 0
    for e in entries:
        if not e.is_write:
            continue
        length = e.nr_sectors * ss
        at = e.sector * ss
        if e.flags & DISCARD:
            zero = bytes(min(length, ZERO_CHUNK))
            done = 0
            while done < length:
                n = min(len(zero), length - done)
                os.pwrite(dev_fd, zero[:n], at + done)
                done += n
        else:
            data = os.pread(log_fd, length, e.data_at)
            if len(data) != length:
                raise LogError(f"entry {e.index}: the log ends inside its data")
            os.pwrite(dev_fd, data, at)
        total += length
    return total


def covers(entry: Entry, ranges: Iterable[tuple[int, int]], sectorsize: int) -> bool:
    """Whether ``entry`` writes into any of ``ranges`` (byte offsets on the logged device,
    end exclusive)."""
    start = entry.sector * sectorsize
    end = start + entry.nr_sectors * sectorsize
    return entry.is_write and any(start < hi and lo < end for lo, hi in ranges)


__all__ = [
    "DISCARD",
    "FLUSH",
    "FUA",
    "MARK",
    "Entry",
    "Log",
    "LogError",
    "apply",
    "covers",
    "parse_super",
    "read",
]
