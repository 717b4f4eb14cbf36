"""The mmap writer: rewrites pages of a mapped file through the mapping and msyncs each one.

msync(MS_SYNC) on Linux is an fdatasync of the range, so a page is durable when it returns and
is ledgered then, just like a write+fsync. Pages carry the same self-describing records as the
ledger writer; a page the snapshot shows half old and half new fails its checksum.
"""

from __future__ import annotations

import mmap
import os
import random
import threading
import time

from vmtests.guest.ledger import PACE_S, ZERO, Ledger, fsync_dir, make_record, parse_record

PAGE = mmap.PAGESIZE
PAGES = 32
NAME = "mmap.dat"


class MmapWriter(threading.Thread):
    def __init__(self, root: str, ledger: Ledger, seed: int, stop: threading.Event) -> None:
        super().__init__(name="mmap", daemon=True)
        self.root, self.ledger, self.seed, self.stop = root, ledger, seed, stop
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
                    self.seq += 1
                    page = self.rng.randrange(PAGES)
                    data = make_record(NAME, page, self.seq, self.seed, PAGE)
                    t0 = time.monotonic()
                    m[page * PAGE : (page + 1) * PAGE] = data
                    m.flush(page * PAGE, PAGE)
                    self.ledger.record(f"m:{page}", str(self.seq), t0, time.monotonic())
        finally:
            os.close(fd)


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
