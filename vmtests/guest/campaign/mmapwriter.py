"""The mmap writer: rewrites pages of a mapped file through the mapping and msyncs each one.

msync(MS_SYNC) on Linux is an fdatasync of the range, so a page is durable when it returns and
is ledgered then, just like a write+fsync. Pages carry the same self-describing records as the
ledger writer; a page the snapshot shows half old and half new fails its checksum.

The store into the mapping is the effect and the msync its acknowledgement (refusal.py): an
msync the method documents as refused leaves the page changed in memory, so it is ledgered
unacknowledged. (remount-ro never gets that far: the writable mapping holds the file open for
writing, so the remount itself is refused; scenarios.HELD_OPEN.)
"""

from __future__ import annotations

import mmap
import os
import random
import threading
import time
from typing import Protocol

from vmtests.guest.campaign.ledger import PACE_S, ZERO, Ledger, fsync_dir, make_record, parse_record
from vmtests.guest.refusal import Rule

PAGE = mmap.PAGESIZE
PAGES = 32
NAME = "mmap.dat"


class Mapping(Protocol):
    """What the writer needs of an ``mmap.mmap`` (a fake one in the unit tests)."""

    def __setitem__(self, index: slice, data: bytes) -> None: ...

    def flush(self, offset: int, size: int) -> None: ...


class MmapWriter(threading.Thread):
    def __init__(
        self, root: str, ledger: Ledger, seed: int, stop: threading.Event, *, rule: Rule
    ) -> None:
        super().__init__(name="mmap", daemon=True)
        self.root, self.ledger, self.seed, self.stop = root, ledger, seed, stop
        self.rule = rule
        self.rng = random.Random(seed * 65537)
        self.seq = 0xFF << 40
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        path = os.path.join(self.root, NAME)
        t0 = time.monotonic()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.posix_fallocate(fd, 0, PAGE * PAGES)  # real blocks: a page fault never allocates
            os.fsync(fd)
            fsync_dir(self.root)
            t1 = time.monotonic()
            for page in range(PAGES):
                self.ledger.record(f"m:{page}", ZERO, t0, t1)
            with mmap.mmap(fd, PAGE * PAGES) as m:
                while not self.stop.wait(PACE_S):
                    self.tick(m)
        finally:
            os.close(fd)

    def tick(self, m: Mapping) -> None:
        """Rewrite one page through the mapping and msync it."""
        self.seq += 1
        page = self.rng.randrange(PAGES)
        data = make_record(NAME, page, self.seq, self.seed, PAGE)

        def store() -> None:
            m[page * PAGE : (page + 1) * PAGE] = data

        def msync(_: None) -> None:
            m.flush(page * PAGE, PAGE)

        self.rule.operate(self.ledger, f"m:{page}", str(self.seq), store, msync)


def observe(root: str, obj: str) -> str:
    page = int(obj[2:])
    try:
        with open(os.path.join(root, NAME), "rb") as f:
            f.seek(page * PAGE)
            data = f.read(PAGE)
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        return f"unreadable:{exc.errno}"
    return parse_record(NAME, page, data)
