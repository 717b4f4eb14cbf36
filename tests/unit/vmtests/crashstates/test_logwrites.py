"""dm-log-writes' format, read and replayed (no VM): a log built here byte for byte as the
kernel's target writes one (drivers/md/dm-log-writes.c) must read back entry for entry and
replay to the disk those writes make; a log that is not one is refused in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmtests.guest.crashstates import logwrites
from vmtests.guest.crashstates.logwrites import DISCARD, ENTRY, FLUSH, FUA, MARK, SUPER

SS = 512


def build_log(path: Path, entries: list[tuple[int, int, int, bytes | str]]) -> None:
    """(sector, nr_sectors, flags, data or mark text) -> a log file as the target lays it."""
    out = bytearray(SS)
    for sector, nr, flags, payload in entries:
        head = bytearray(SS)
        if flags & MARK:
            text = str(payload).encode()
            ENTRY.pack_into(head, 0, 0, 0, flags, len(text))
            head[ENTRY.size : ENTRY.size + len(text)] = text
            out += head
            continue
        ENTRY.pack_into(head, 0, sector, nr, flags, 0)
        out += head
        if nr and not flags & DISCARD:
            assert isinstance(payload, bytes) and len(payload) == nr * SS
            out += payload
    SUPER.pack_into(out, 0, logwrites.MAGIC, logwrites.VERSION, len(entries), SS)
    path.write_bytes(bytes(out))


def test_a_log_reads_back_entry_for_entry_and_replays_to_the_disk(tmp_path: Path) -> None:
    a, b = b"a" * SS * 2, b"b" * SS
    build_log(
        tmp_path / "log",
        [
            (0, 2, 0, a),  # a plain write
            (0, 0, FLUSH, b""),  # the flush that made it durable
            (0, 0, MARK, "base"),
            (1, 1, FUA, b),  # over a's second sector
            (4, 2, DISCARD, b""),
        ],
    )
    fd = os.open(tmp_path / "log", os.O_RDONLY)
    lg = logwrites.read(fd)
    assert [e.index for e in lg.entries] == [1, 2, 3, 4, 5]
    assert lg.marks() == [(3, "base")]
    assert [e.durable_point for e in lg.entries] == [False, True, False, True, False]
    assert [e.is_write for e in lg.entries] == [True, False, False, True, True]
    disk = tmp_path / "disk"
    disk.write_bytes(b"\xff" * SS * 8)
    dev = os.open(disk, os.O_RDWR)
    logwrites.apply(lg, fd, dev, lg.entries)
    got = disk.read_bytes()
    assert got[:SS] == b"a" * SS and got[SS : 2 * SS] == b"b" * SS  # the later write wins
    assert got[4 * SS : 6 * SS] == bytes(2 * SS)  # a discard replays as zeroes
    assert got[2 * SS : 4 * SS] == b"\xff" * 2 * SS  # nothing else touched
    assert logwrites.covers(lg.entries[3], [(SS, SS + 1)], SS)
    assert not logwrites.covers(lg.entries[3], [(2 * SS, 3 * SS)], SS)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"", "shorter than its super"),
        (SUPER.pack(0x1234, 1, 0, SS), "not a dm-log-writes log"),
        (SUPER.pack(logwrites.MAGIC, 2, 0, SS), "log version 2"),
        (SUPER.pack(logwrites.MAGIC, 1, 0, 500), "not a power of two"),
    ],
)
def test_what_is_not_a_log_is_refused_in_one_line(raw: bytes, says: str) -> None:
    with pytest.raises(logwrites.LogError, match=says):
        logwrites.parse_super(raw)


def test_a_log_cut_short_is_refused(tmp_path: Path) -> None:
    build_log(tmp_path / "log", [(0, 2, 0, b"a" * SS * 2)])
    raw = (tmp_path / "log").read_bytes()
    (tmp_path / "log").write_bytes(SUPER.pack(logwrites.MAGIC, 1, 2, SS) + raw[SUPER.size :])
    with pytest.raises(logwrites.LogError, match="ends inside entry 2"):
        logwrites.read(os.open(tmp_path / "log", os.O_RDONLY))
