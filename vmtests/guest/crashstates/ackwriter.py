"""The crash states' ledger writer: the ledger is the write log itself.

``ackwriter.py DIR TAG STOPFILE LOGDEV [skipflush]`` writes ``DIR/f<N>`` (N = 1, 2, ...; the
bytes of ``writer.pattern(N)``), fsyncs the file and the directory, and only then puts the mark
``ack:TAG:N`` into the dm-log-writes device LOGDEV (the target message, by ioctl from this
process: no command per write). A mark is logged at once, after every entry already durable,
so in the log ``ack:TAG:N`` stands exactly where the writer was told f<N> was safe: every crash
state cut after it must hold f<N>. That is a stricter ledger than a ledger file on the disk
under test, which a lost flush could take away together with the file it vouches for.

``skipflush`` is the planted bug of the negative control: the file's fsync is skipped (the
directory's stays), so the writer acknowledges data still in the page cache. The count of
acknowledged files goes to ``/tmp/acks-TAG`` (tmpfs: not logged) for the recorder to wait on.
Stops when STOPFILE exists. Standard library and snapkit only.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # run as a script in the guest

from snapkit.dm.control import IoctlDm
from vmtests.guest.writer import pattern


def write(directory: str, tag: str, stop: str, logdev: str, skipflush: bool) -> int:
    os.makedirs(directory, exist_ok=True)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    pace = 0.1 if skipflush else 0.0  # the control writer is a light second load
    n = 0
    with IoctlDm() as dm:
        while not os.path.exists(stop):
            n += 1
            fd = os.open(f"{directory}/f{n}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, pattern(n))
                if not skipflush:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.fsync(dfd)
            dm.message(logdev, 0, f"mark ack:{tag}:{n}")
            with open(f"/tmp/acks-{tag}", "w", encoding="utf-8") as f:
                f.write(str(n))
            time.sleep(pace)
    os.close(dfd)
    return 0


if __name__ == "__main__":
    a = sys.argv[1:]
    sys.exit(write(a[0], a[1], a[2], a[3], a[4:5] == ["skipflush"]))
