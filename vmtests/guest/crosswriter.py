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

import itertools
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


def write(dirs: list[Path], ledger: Path, stop: Path) -> int:
    """Record n on each directory in turn, each durable before the next begins (a chain: the
    campaign's groups of three write A, then B, then C)."""
    for directory in dirs:
        directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(ledger, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    n = 0
    try:
        while not stop.exists():
            n += 1
            for directory in dirs:
                _durable(directory, n)
            os.write(fd, f"{n}\n".encode())
            os.fsync(fd)
    finally:
        os.close(fd)
    return 0


def present(directory: Path) -> set[int]:
    """The records intact in ``directory`` (read while its snapshot is mounted)."""
    found = set()
    for path in directory.glob("r*"):
        try:
            n = int(path.name[1:])
        except ValueError:
            continue
        if path.read_bytes() == pattern(n):
            found.add(n)
    return found


def judge(found: list[set[int]], acknowledged: int) -> dict[str, object]:
    """The chain's check: ``missing`` (acknowledged before the create, absent or torn on some
    member) and ``broken`` (n on a member whose predecessor lacks n: causality across members
    broken; checking each member against the one before it is enough, causality being
    transitive). With two members: ``a``, ``b`` as ``check`` has always said."""
    wanted = set(range(1, acknowledged + 1))
    every = set.intersection(*found) if found else set()
    broken = sorted(set().union(*(b - a for a, b in itertools.pairwise(found))))
    counts: dict[str, object] = {k: len(f) for k, f in zip("abcdefgh", found, strict=False)}
    return {**counts, "missing": sorted(wanted - every), "broken": broken}


def check(dir_a: Path, dir_b: Path, acknowledged: int) -> dict[str, object]:
    return judge([present(dir_a), present(dir_b)], acknowledged)


def main(argv: list[str]) -> int:
    if argv[:1] == ["write"] and len(argv) == 5:
        return write([Path(argv[1]), Path(argv[2])], Path(argv[3]), Path(argv[4]))
    if argv[:1] == ["check"] and len(argv) == 4:
        print(json.dumps(check(Path(argv[1]), Path(argv[2]), int(argv[3]))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
