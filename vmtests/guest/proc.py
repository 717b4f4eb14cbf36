"""The guest runner's one way to run a command: argv list, logged with its time, output kept.

Every command and its output go to one log (stderr, streamed to the host live, and kept in the
scenario's artifacts), so a failing scenario can be read step by step afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

T0 = time.monotonic()
LOG: list[str] = []


def log(text: str) -> None:
    line = f"[{time.monotonic() - T0:7.3f}] {text}"
    LOG.append(line)
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    out: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class CommandError(Exception):
    def __init__(self, result: Result) -> None:
        super().__init__(f"{' '.join(result.argv)} exited {result.returncode}: {result.out[-800:]}")
        self.result = result


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 120.0, stdin: str | None = None
) -> Result:
    """Run ``argv``, log it and its output; ``stdin`` is fed to it (and never logged)."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            list(argv),
            input=stdin.encode() if stdin is not None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
        code, out = proc.returncode, proc.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired as exc:
        code, out = -9, (exc.output or b"").decode(errors="replace") + "\n(timed out)"
    result = Result(tuple(argv), code, out, time.monotonic() - t0)
    log(f"$ {' '.join(argv)}  -> {code} in {result.seconds:.2f}s")
    for line in out.rstrip().splitlines()[-40:]:
        log(f"  | {line}")
    if check and code != 0:
        raise CommandError(result)
    return result
