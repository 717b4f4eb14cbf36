"""A minimal guest-side writer and manifest, for the raw dm method tests (stdlib only).

``writer.py write DIR LEDGER STOPFILE``: writes ``DIR/f<N>`` (N = 1, 2, ...), each 16 KiB of a
pattern derived from N, fsyncs the file and the directory, and only then appends ``N`` to
LEDGER (fsync'd too). So every number in LEDGER is a write the kernel acknowledged as durable.
Stops when STOPFILE exists.

``writer.py manifest DIR``: prints ``{relative path: sha256}`` of every regular file as JSON, so
two trees can be compared from the host.

``writer.py check DIR LEDGER_COUNT``: verifies files ``f1..fK`` (K = LEDGER_COUNT) exist with
their exact pattern, and prints the highest N present; exits 1 with a message on a mismatch.

A fuller campaign ledger lives elsewhere; this one is deliberately tiny.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

SIZE = 16 * 1024


def pattern(n: int) -> bytes:
    seed = hashlib.sha256(f"file {n}".encode()).digest()
    return (seed * (SIZE // len(seed) + 1))[:SIZE]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(directory: Path, ledger: Path, stop: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    log = os.open(ledger, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    n = 0
    while not stop.exists():
        n += 1
        fd = os.open(directory / f"f{n}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, pattern(n))
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(directory)
        os.write(log, f"{n}\n".encode())
        os.fsync(log)
    os.close(log)
    return 0


def manifest(directory: Path) -> dict[str, str]:
    out = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                out[str(path.relative_to(directory))] = hashlib.sha256(
                    path.read_bytes()
                ).hexdigest()
    return dict(sorted(out.items()))


def check(directory: Path, count: int) -> int:
    for n in range(1, count + 1):
        path = directory / f"f{n}"
        if not path.exists() or path.read_bytes() != pattern(n):
            print(f"f{n} is missing or wrong although it was acknowledged", file=sys.stderr)
            return 1
    present = [int(p.name[1:]) for p in directory.glob("f*") if p.name[1:].isdigit()]
    print(max(present, default=0))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["write"] and len(argv) == 4:
        return write(Path(argv[1]), Path(argv[2]), Path(argv[3]))
    if argv[:1] == ["manifest"] and len(argv) == 2:
        print(json.dumps(manifest(Path(argv[1]))))
        return 0
    if argv[:1] == ["check"] and len(argv) == 3:
        return check(Path(argv[1]), int(argv[2]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
