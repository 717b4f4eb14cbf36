"""A minimal guest-side writer and manifest, for the raw dm method tests (stdlib only).

``writer.py write DIR LEDGER STOPFILE [METHOD [PACE]]``: writes ``DIR/f<N>`` (N = 1, 2, ...),
each 16 KiB of a pattern derived from N, fsyncs the file and the directory, and only then
appends ``N`` to LEDGER (fsync'd too). So every number in LEDGER is a write the kernel
acknowledged as durable. Stops when STOPFILE exists. A write that METHOD documents as refused
(refusal.py, e.g. EROFS under remount-ro) is not ledgered and ``f<N>`` is written again (the
same bytes); any other error ends the writer. PACE (seconds, default 0) is slept between
writes: remount-ro's own refusal (EBUSY) comes while a file is open for writing, so a test of
it writes at an idle pace, as the campaign's writers do.

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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script in the guest

from vmtests.guest.refusal import Rule

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


class Numbers:
    """The LEDGER file as a ``refusal.Recorder``: acknowledged numbers only, each fsync'd."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.acked = 0  # the highest number in the file
        self.refused = 0

    def record(self, obj: str, state: str, t0: float, t1: float | None) -> None:
        if t1 is None:  # written, never acknowledged: not a number for LEDGER's readers
            return
        os.write(self.fd, f"{state}\n".encode())
        os.fsync(self.fd)
        self.acked = int(state)

    def refuse(self, obj: str, state: str, code: int, t0: float, t1: float) -> None:
        self.refused += 1

    def close(self) -> None:
        os.close(self.fd)


def write(
    directory: Path, ledger: Path, stop: Path, rule: Rule | None = None, pace: float = 0.0
) -> int:
    rule = rule or Rule("")  # no method: no refusal is documented
    directory.mkdir(parents=True, exist_ok=True)
    log = Numbers(ledger)
    while not stop.exists():
        n = log.acked + 1  # the next file, or again the one a refusal left unacknowledged

        def effect(n: int = n) -> None:
            fd = os.open(directory / f"f{n}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, pattern(n))
                os.fsync(fd)
            finally:
                os.close(fd)

        rule.operate(log, f"f{n}", str(n), effect, lambda _: _fsync_dir(directory))
        time.sleep(pace)
    log.close()
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
    if argv[:1] == ["write"] and len(argv) in (4, 5, 6):
        rule = Rule(argv[4]) if len(argv) >= 5 else None
        pace = float(argv[5]) if len(argv) == 6 else 0.0
        return write(Path(argv[1]), Path(argv[2]), Path(argv[3]), rule, pace)
    if argv[:1] == ["manifest"] and len(argv) == 2:
        print(json.dumps(manifest(Path(argv[1]))))
        return 0
    if argv[:1] == ["check"] and len(argv) == 3:
        return check(Path(argv[1]), int(argv[2]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
