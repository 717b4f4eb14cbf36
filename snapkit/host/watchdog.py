"""The watchdog: a separate process that thaws a filesystem, or resumes a suspended dm
device, if snapkit cannot.

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

The same holds for a dm suspend (``--resume NAME... ORIGIN``, :class:`_Resume`): a suspended
origin hangs every writer of its filesystem just as a freeze does, and the kernel resumes
nothing when snapkit dies. At the deadline, or at a death while armed, the watchdog finishes the
window as snapkit would have -- it resumes the devices named before the origin that still wait
with a loaded table (the new snapshot), then the origin, which swaps in the table loaded before
the suspend -- so the snapshot left is whole, taken at the suspend, and ``recover`` adopts it
from its dm uuid. It acts only on an origin that is still suspended: before the suspend, or
after snapkit's own resume, a resume would swap tables without snapkit, so it does nothing
(``idle``). Its words are then ``resumed deadline`` / ``resumed eof``.
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
from typing import TYPE_CHECKING

from snapkit.errors import OperationError
from snapkit.host.fs import thaw_fd

if TYPE_CHECKING:
    from snapkit.dm.control import DmControl

IDLE_POLL = 0.05  # while a dm suspend is still under way at the deadline
EOF_GRACE = 2.0  # how long a dead snapkit's suspend may take to land before nothing is owed
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
        self.args = [str(mountpoint), *self.resume]  # resuming() makes it the --resume mode
        self.proc: subprocess.Popen[bytes] | None = None
        self.thawed_by_watchdog = False

    @classmethod
    def resuming(cls, names: Sequence[str], *, python: str = sys.executable) -> Watchdog:
        """A watchdog over a dm suspend: ``names`` in resume order, the suspended origin last
        (already checked dm names: they reach the helper as argv words, never a shell)."""
        dog = cls(Path("/dev/mapper") / names[-1], python=python)
        dog.args = ["--resume", *names]
        return dog

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(_PACKAGE_ROOT))
        self.proc = subprocess.Popen(  # a helper that outlives a step: not a run() command
            [self.python, "-m", "snapkit.host.watchdog", *self.args],
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
                f"the watchdog for {self.mountpoint} did not start ({line or 'no answer'})",
                hint="nothing was frozen or suspended",
            )

    def arm(self, deadline: float) -> None:
        self._send(f"arm {deadline:.6f}")

    def stop(self) -> bool:
        """Say "done" and reap it. True if the watchdog had thawed the filesystem (resumed the
        origin) first."""
        proc = self.proc
        if proc is None:
            return self.thawed_by_watchdog
        self.proc = None
        self._send_to(proc, "done")
        if proc.stdin:
            proc.stdin.close()
        out = proc.stdout.read() if proc.stdout else b""
        proc.wait()
        if b"thaw" in out or b"resume" in out:
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


def resume_guard(names: Sequence[str]) -> Watchdog:
    """The watchdog over a dm suspend of ``names[-1]`` (the real host's factory)."""
    return Watchdog.resuming(names)


# --- the watchdog process itself -------------------------------------------------------------


def _say(text: str) -> None:
    with contextlib.suppress(OSError):  # snapkit is gone: nobody to tell
        os.write(1, text.encode() + b"\n")


class _Watch:
    """The watchdog's state; ``armed`` is read by the SIGTERM handler."""

    FAILED = "thaw"  # the word a failed release is said with

    def __init__(self, fd: int, resume: Sequence[str] = ()) -> None:
        self.fd = fd
        self.resume = resume
        self.deadline: float | None = None
        self.thawed = ""

    def on_term(self, signum: int, frame: FrameType | None) -> None:
        if self.deadline is not None and not self.thawed:
            self.fire("term")
        os._exit(0)

    def release(self) -> str:
        """Undo the hold; the word that says what was done. Every device named to resume is
        resumed first: thawing writes the superblock, which would wait for ever on a device
        left suspended."""
        for name in self.resume:
            _resume(name)
        thaw_fd(self.fd)
        return "thawed"

    def fire(self, why: str) -> None:
        """Release and say so; a failed release is said too (nothing else can be done)."""
        try:
            said = f"{self.release()} {why}"
        except OSError as exc:
            said = f"{self.FAILED} failed {exc.strerror}"
        if said.startswith("idle"):
            return  # nothing held (yet): nothing to say, and the watch goes on
        self.thawed = said
        _say(said)

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
                self.fire("deadline")
                if not self.thawed:  # a suspend still under way: look again until it lands
                    self.deadline = time.monotonic() + IDLE_POLL
                continue
            chunk = os.read(control, 4096)
            if not chunk:
                if self.deadline is None:
                    return "idle eof"
                grace = time.monotonic() + EOF_GRACE
                while not self.thawed and time.monotonic() < grace:
                    self.fire("eof")  # a suspend that snapkit's death did not abort lands soon
                    time.sleep(0 if self.thawed else IDLE_POLL)
                return self.thawed or "idle eof"
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                word, _, arg = line.decode(errors="replace").partition(" ")
                if word == "arm":
                    self.deadline = float(arg)
                elif word == "done":
                    return self.thawed or "done"


class _Resume(_Watch):
    """The watch over a dm suspend: ``names`` in resume order, the origin last."""

    FAILED = "resume"

    def __init__(self, names: Sequence[str], dm: DmControl | None = None) -> None:
        from snapkit.dm.control import IoctlDm  # opened now, before any suspend

        super().__init__(-1)
        self.names = list(names)
        self.dm: DmControl = dm if dm is not None else IoctlDm()

    def release(self) -> str:
        origin = self.dm.info(self.names[-1])
        if origin is None or not origin.suspended:
            return "idle"  # before the suspend or after snapkit's resume: not ours to swap
        for name in self.names[:-1]:
            info = self.dm.info(name)
            if info is not None and (info.suspended or info.inactive_table):
                self.dm.resume(name)
        self.dm.resume(self.names[-1])
        return "resumed"


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
    resume = argv[:1] == ["--resume"] and len(argv) > 1
    if not argv or (argv[0] == "--resume" and not resume):
        print(
            "usage: python -m snapkit.host.watchdog MOUNTPOINT [DM_NAME...] | --resume NAME... "
            "ORIGIN",
            file=sys.stderr,
        )
        return 2
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    watch = (
        _Resume(argv[1:])
        if resume
        else _Watch(os.open(argv[0], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), argv[1:])
    )
    signal.signal(signal.SIGTERM, watch.on_term)
    _say("ready")
    watch.serve(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
