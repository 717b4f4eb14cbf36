"""Send a signal to a command at the moment a dm device is suspended (stdlib only).

``sigwhen.py DMNAME SIGNUM TIMEOUT -- CMD...`` starts CMD, polls
``/sys/block/dm-*/dm/suspended`` of DMNAME about every half millisecond, and the first time it
reads 1 sends SIGNUM to CMD's process (not its group: snapkit runs its own children in their
own sessions, as a terminal's Ctrl-C would find them). It then waits for CMD and prints one
JSON line: ``{"fired": bool, "returncode": int, "suspended_ms": float}``, where
``suspended_ms`` is how long after the start the suspend was seen.

Why a guest helper: the window a tool like ``lvcreate`` holds an origin suspended lasts tens
of milliseconds, far less than one host round trip to the guest, and the flow's test pause
hook can only stop snapkit *between* steps, not inside one external command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def suspended_file(name: str) -> Path | None:
    for block in Path("/sys/block").glob("dm-*"):
        try:
            if (block / "dm" / "name").read_text().strip() == name:
                return block / "dm" / "suspended"
        except OSError:
            continue
    return None


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    name, signum, timeout, command = argv[0], int(argv[1]), float(argv[2]), argv[4:]
    flag = suspended_file(name)
    if flag is None:
        print(f"no dm device named {name}", file=sys.stderr)
        return 2
    start = time.monotonic()
    proc = subprocess.Popen(command)
    fired, seen = False, 0.0
    while proc.poll() is None and time.monotonic() - start < timeout:
        if flag.read_text().strip() == "1":
            os.kill(proc.pid, signum)
            fired, seen = True, (time.monotonic() - start) * 1000
            break
        time.sleep(0.0001)
    returncode = proc.wait()
    print(json.dumps({"fired": fired, "returncode": returncode, "suspended_ms": seen}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
