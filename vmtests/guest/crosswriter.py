"""The cross-volume writer and its check, for snapshot groups (issue 15; stdlib only).

``crosswriter.py write DIR_A DIR_B LEDGER STOPFILE``: for n = 1, 2, ...: writes ``DIR_A/r<n>``
(4 KiB of a pattern from n), fsyncs it and its directory; *only then* writes ``DIR_B/r<n>``
the same way; then appends n to LEDGER (fsync'd). So record n on B always started after
record n on A was acknowledged: a causally ordered pair across two filesystems. Stops when
STOPFILE exists.

``crosswriter.py check DIR_A DIR_B ACKNOWLEDGED``: judges a pair of snapshots (or of origins
after a merge). Prints JSON: ``a``/``b`` (the records present and intact on each),
``missing`` (records n <= ACKNOWLEDGED absent or torn on either side: acknowledged before the
create began, so they must be there), and ``broken`` (records present on B whose record on A
is absent: the cross-volume check -- a shared point in time never shows one).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SIZE = 4096


def pattern(n: int) -> bytes:
    line = f"record {n:08d}\n".encode()
    return (line * (SIZE // len(line) + 1))[:SIZE]


def _durable(directory: Path, n: int) -> None:
    path = directory / f"r{n}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, pattern(n))
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write(dir_a: Path, dir_b: Path, ledger: Path, stop: Path) -> int:
    dir_a.mkdir(parents=True, exist_ok=True)
    dir_b.mkdir(parents=True, exist_ok=True)
    fd = os.open(ledger, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    n = 0
    try:
        while not stop.exists():
            n += 1
            _durable(dir_a, n)
            _durable(dir_b, n)
            os.write(fd, f"{n}\n".encode())
            os.fsync(fd)
    finally:
        os.close(fd)
    return 0


def _present(directory: Path) -> set[int]:
    found = set()
    for path in directory.glob("r*"):
        try:
            n = int(path.name[1:])
        except ValueError:
            continue
        if path.read_bytes() == pattern(n):
            found.add(n)
    return found


def check(dir_a: Path, dir_b: Path, acknowledged: int) -> dict[str, object]:
    a, b = _present(dir_a), _present(dir_b)
    wanted = set(range(1, acknowledged + 1))
    return {
        "a": len(a),
        "b": len(b),
        "missing": sorted(wanted - (a & b)),
        "broken": sorted(b - a),
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["write"] and len(argv) == 5:
        return write(Path(argv[1]), Path(argv[2]), Path(argv[3]), Path(argv[4]))
    if argv[:1] == ["check"] and len(argv) == 4:
        print(json.dumps(check(Path(argv[1]), Path(argv[2]), int(argv[3]))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
