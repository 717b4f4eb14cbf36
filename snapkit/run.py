"""The one way snapkit runs an external command.

Every command goes through :class:`Executor`, so that plans and methods never touch
``subprocess`` and tests can swap in a fake. The real executor:

* takes an argv list, never a shell string, so no value can be read as shell syntax;
* pins the environment (``LC_ALL=C`` so outputs parse the same everywhere, ``DM_DISABLE_UDEV=1``
  so LVM and dmsetup never wait for udev cookies in a guest without udev, a fixed ``PATH`` so
  ``lvcreate`` is the system's and not whatever the caller's PATH finds first);
* logs each command and its outcome through :mod:`logging`;
* kills the child (and its process group) on a timeout or *any* exception, including
  KeyboardInterrupt, so an interrupted snapkit never leaves an ``lvcreate`` running behind it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from snapkit.errors import CommandError

log = logging.getLogger(__name__)

PINNED_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TIMEOUT = 120.0
_KILL_GRACE = 2.0


def pinned_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every child gets: nothing inherited but what is named here."""
    env = {
        "PATH": PINNED_PATH,
        "LC_ALL": "C",
        "LANG": "C",
        "DM_DISABLE_UDEV": "1",
    }
    for name in ("HOME", "TERM", "TMPDIR"):
        if name in os.environ:
            env[name] = os.environ[name]
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True)
class Completed:
    """What a finished command did. Output is decoded as UTF-8 with replacement characters."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class CommandTimeout(CommandError):
    """A command ran past its timeout and was killed."""

    def __init__(self, argv: list[str], timeout: float, stderr: str = "") -> None:
        super().__init__(argv, -signal.SIGKILL, stderr, hint="it was killed; see the log")
        self.message = f"{argv[0]} did not finish within {timeout:g} s"
        self.timeout = timeout


class Executor(Protocol):
    """Runs commands. The seam that tests replace with a fake."""

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = DEFAULT_TIMEOUT,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        """Run ``argv`` and return its result; raise CommandError on non-zero if ``check``."""
        ...


class SubprocessExecutor:
    """The executor that really runs things."""

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = DEFAULT_TIMEOUT,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        args = _checked_argv(argv)
        log.debug("run: %s", shlex.join(args))
        start = time.monotonic()
        with subprocess.Popen(
            args,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=pinned_env(env),
            start_new_session=True,  # its own process group, so we can kill all of it
        ) as proc:
            try:
                out, err = proc.communicate(
                    input.encode() if input is not None else None, timeout=timeout
                )
            except subprocess.TimeoutExpired:
                _kill(proc)
                err_text = _drain_stderr(proc)
                log.warning("timeout after %s s: %s", timeout, shlex.join(args))
                raise CommandTimeout(args, timeout or 0.0, err_text) from None
            except BaseException:
                _kill(proc)
                log.warning("killed on interruption: %s", shlex.join(args))
                raise
        result = Completed(
            argv=tuple(args),
            returncode=proc.returncode,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            seconds=time.monotonic() - start,
        )
        log.debug("exit %d in %.3f s: %s", result.returncode, result.seconds, args[0])
        if check and not result.ok:
            raise CommandError(args, result.returncode, result.stderr)
        return result


def _checked_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, str):  # a str is a Sequence[str]: refuse the shell-string mistake
        raise TypeError("run() takes an argv list, not a string")
    args = [str(a) for a in argv]
    if not args:
        raise ValueError("run() needs at least a program name")
    return args


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child's whole process group and reap it; never raises."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=_KILL_GRACE)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail to kill
        log.error("pid %d did not die after SIGKILL", proc.pid)


def _drain_stderr(proc: subprocess.Popen[bytes]) -> str:
    try:
        _, err = proc.communicate(timeout=_KILL_GRACE)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        return ""
    return err.decode(errors="replace") if err else ""


_default = SubprocessExecutor()


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = DEFAULT_TIMEOUT,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Completed:
    """Run ``argv`` with the real executor; for code that has no executor injected."""
    return _default.run(argv, check=check, timeout=timeout, input=input, env=env)


__all__ = [
    "DEFAULT_TIMEOUT",
    "PINNED_PATH",
    "CommandTimeout",
    "Completed",
    "Executor",
    "SubprocessExecutor",
    "pinned_env",
    "run",
]
