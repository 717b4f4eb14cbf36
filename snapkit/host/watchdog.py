"""The freeze watchdog: a separate process that thaws a filesystem if snapkit cannot.

A frozen filesystem hangs every writer on the machine until someone thaws it, and the kernel
does not thaw it when the freezer dies. snapkit thaws in ``finally`` and in plan undos, but that
cannot run after SIGKILL, an OOM kill or a hang. So before freezing, snapkit starts this module as
its own process, in its own session (a Ctrl-C or a kill of snapkit's process group does not reach
it), holding its own fd of the mount point, opened before the freeze so that the thaw itself
never has to look up a path on a frozen filesystem.

Protocol, one line at a time on the watchdog's stdin; it answers on stdout::

    (watchdog)  ready                 fd open, listening
    (snapkit)   arm DEADLINE          about to freeze; DEADLINE is CLOCK_MONOTONIC seconds
    (snapkit)   done                  thawed by snapkit: exit without touching the filesystem
    (watchdog)  thawed deadline       DEADLINE passed before "done": it thawed the filesystem
    (watchdog)  thawed eof            stdin closed after "arm" without "done": snapkit died

Devices named after the mount point (a snapshot group of lvm members suspends each origin
itself) are resumed, if still suspended, before any thaw: a thaw writes the superblock.

A closed stdin without "arm" means snapkit died before freezing: nothing to thaw. SIGTERM thaws
(if armed) and exits; SIGINT and SIGHUP are ignored.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from snapkit.errors import OperationError
from snapkit.host.fs import thaw_fd

READY_TIMEOUT = 60.0  # Python start-up under TCG emulation alone takes ~1.6 s
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds snapkit/


class Watchdog:
    """The snapkit side: start, arm, and stop the watchdog process."""

    def __init__(
        self, mountpoint: Path, *, resume: Sequence[str] = (), python: str = sys.executable
    ) -> None:
        self.mountpoint = mountpoint
        self.resume = tuple(resume)
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self.thawed_by_watchdog = False

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(_PACKAGE_ROOT))
        self.proc = subprocess.Popen(  # a helper that outlives a step: not a run() command
            [self.python, "-m", "snapkit.host.watchdog", str(self.mountpoint), *self.resume],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        line = self._readline(READY_TIMEOUT)
        if line != "ready":
            self.stop()
            raise OperationError(
                f"the freeze watchdog for {self.mountpoint} did not start ({line or 'no answer'})",
                hint="nothing was frozen",
            )

    def arm(self, deadline: float) -> None:
        self._send(f"arm {deadline:.6f}")

    def stop(self) -> bool:
        """Say "done" and reap it. True if the watchdog had thawed the filesystem first."""
        proc = self.proc
        if proc is None:
            return self.thawed_by_watchdog
        self.proc = None
        self._send_to(proc, "done")
        if proc.stdin:
            proc.stdin.close()
        out = proc.stdout.read() if proc.stdout else b""
        proc.wait()
        if b"thaw" in out:
            self.thawed_by_watchdog = True
        return self.thawed_by_watchdog

    def abandon(self) -> None:
        """Close stdin without "done": the watchdog thaws at once if armed (for rollback)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin:
            proc.stdin.close()
        if proc.stdout:
            proc.stdout.close()
        proc.wait()

    def _send(self, line: str) -> None:
        if self.proc is None:
            raise OperationError("the freeze watchdog is not running")
        self._send_to(self.proc, line)

    @staticmethod
    def _send_to(proc: subprocess.Popen[bytes], line: str) -> None:
        try:
            assert proc.stdin is not None
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise OperationError("the freeze watchdog died", hint="check the filesystem") from exc

    def _readline(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return ""
        return self.proc.stdout.readline().decode(errors="replace").strip()


# --- the watchdog process itself -------------------------------------------------------------


def _say(text: str) -> None:
    with contextlib.suppress(OSError):  # snapkit is gone: nobody to tell
        os.write(1, text.encode() + b"\n")


class _Watch:
    """The watchdog's state; ``armed`` is read by the SIGTERM handler."""

    def __init__(self, fd: int, resume: Sequence[str] = ()) -> None:
        self.fd = fd
        self.resume = resume
        self.deadline: float | None = None
        self.thawed = ""

    def on_term(self, signum: int, frame: FrameType | None) -> None:
        if self.deadline is not None and not self.thawed:
            self.thaw("thawed term")
        os._exit(0)

    def thaw(self, why: str) -> None:
        """Thaw and say so; a failed thaw is said too (nothing else can be done about it).
        Every device named to resume is resumed first: thawing writes the superblock, which
        would wait for ever on a device left suspended."""
        for name in self.resume:
            _resume(name)
        try:
            thaw_fd(self.fd)
        except OSError as exc:
            why = f"thaw failed {exc.strerror}"
        self.thawed = why
        _say(why)

    def serve(self, control: int) -> str:
        """Serve the protocol on ``control`` (stdin). Returns what happened: "done",
        "idle eof", "thawed deadline" or "thawed eof"."""
        buffer = b""
        while True:
            timeout = None
            if self.deadline is not None and not self.thawed:
                timeout = max(0.0, self.deadline - time.monotonic())
            readable, _, _ = select.select([control], [], [], timeout)
            if not readable:  # the deadline passed
                self.thaw("thawed deadline")
                continue
            chunk = os.read(control, 4096)
            if not chunk:
                if self.deadline is None:
                    return "idle eof"
                if not self.thawed:
                    self.thaw("thawed eof")
                return self.thawed
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                word, _, arg = line.decode(errors="replace").partition(" ")
                if word == "arm":
                    self.deadline = float(arg)
                elif word == "done":
                    return self.thawed or "done"


def _resume(name: str) -> None:
    """Resume dm device ``name`` if it is suspended with no table waiting. One with an inactive
    table is in the middle of a reload by its owner (lvcreate), which resumes it itself: a
    resume here would swap in a table whose devices are not ready."""
    from snapkit.dm.control import IoctlDm  # only a watchdog with devices to resume needs it

    try:
        with IoctlDm() as dm:
            info = dm.info(name)
            if info is not None and info.suspended and not info.inactive_table:
                dm.resume(name, lockfs=False)
                _say(f"resumed {name}")
    except (OperationError, OSError) as exc:  # DmError is an OperationError
        _say(f"resume failed {name} {exc}")


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m snapkit.host.watchdog MOUNTPOINT [DM_NAME...]", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    watch = _Watch(os.open(argv[0], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), argv[1:])
    signal.signal(signal.SIGTERM, watch.on_term)
    _say("ready")
    watch.serve(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
