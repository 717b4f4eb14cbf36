"""Loop devices over sparse COW files: the backing store of the raw dm methods.

Everything goes through ``losetup`` (util-linux) via the executor, so tests swap in a fake and
the dry run can print the exact command. Two kernel facts shape the API:

* ``losetup -d`` on a loop device that is still open does not fail: it sets autoclear and the
  device goes when its last user closes it. So detaching is safe to order after removing the
  dm devices that use it, and a rollback never leaks a loop device.
* The name of a loop device is only known once it is attached, so plans refer to it through a
  :class:`LoopSlot` filled by the attach step; after a reboot the name is gone, so cleanup
  finds loop devices by their backing file (``losetup -j``), never by a remembered name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from snapkit.errors import OperationError
from snapkit.run import Executor


class Loops(Protocol):
    """The loop operations the dm methods need; one command each."""

    def attach(self, backing: Path) -> Path: ...
    def detach(self, device: Path) -> None: ...
    def find(self, backing: Path) -> tuple[Path, ...]: ...
    def refresh(self, device: Path) -> None: ...


class Files(Protocol):
    """The COW file operations; a seam so unit tests can count and fail them."""

    def create_sparse(self, path: Path, size: int) -> None: ...
    def grow(self, path: Path, size: int) -> None: ...
    def unlink(self, path: Path) -> None: ...
    def exists(self, path: Path) -> bool: ...


class LosetupLoops:
    """:class:`Loops` through util-linux ``losetup``."""

    def __init__(self, run: Executor) -> None:
        self._run = run

    def attach(self, backing: Path) -> Path:
        out = self._run.run(["losetup", "--find", "--show", str(backing)]).stdout.strip()
        if not out.startswith("/dev/"):
            raise OperationError(f"losetup printed {out!r} instead of a device path")
        return Path(out)

    def detach(self, device: Path) -> None:
        self._run.run(["losetup", "--detach", str(device)])

    def find(self, backing: Path) -> tuple[Path, ...]:
        """Loop devices whose backing file is ``backing`` (by inode, as ``losetup -j`` does)."""
        out = self._run.run(["losetup", "--associated", str(backing)], check=False).stdout
        return tuple(Path(line.split(":", 1)[0]) for line in out.splitlines() if ":" in line)

    def refresh(self, device: Path) -> None:
        self._run.run(["losetup", "--set-capacity", str(device)])


class LocalFiles:
    """:class:`Files` on the local filesystem."""

    def create_sparse(self, path: Path, size: int) -> None:
        # O_EXCL: never take over a file someone else made; a sparse file reads as zeros, so
        # the kernel sees magic 0 at chunk 0 and starts a fresh store (snapkit.cow.format.Header).
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def grow(self, path: Path, size: int) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def unlink(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def exists(self, path: Path) -> bool:
        return path.exists()


@dataclass
class LoopSlot:
    """The loop device a plan attached, known only once the attach step has run."""

    backing: Path
    device: Path | None = None

    @property
    def path(self) -> Path:
        if self.device is None:
            raise OperationError(f"no loop device is attached to {self.backing} yet")
        return self.device

    def __str__(self) -> str:
        return str(self.device) if self.device else f"<loop of {self.backing.name}>"


__all__ = ["Files", "LocalFiles", "LoopSlot", "Loops", "LosetupLoops"]
