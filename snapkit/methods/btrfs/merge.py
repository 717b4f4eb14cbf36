"""btrfs merge's subvolume steps: the origin is replaced by an atomic exchange, so that it
exists under its name at every instant -- a power cut or a SIGKILL anywhere in the merge leaves
either the old origin or the snapshot's content there, never nothing.

1. snapshot ``/.snapkit/NAME`` (writable) as ``ORIG.snapkit-new-NAME``, the spare;
2. exchange ``ORIG`` and the spare (``renameat2(RENAME_EXCHANGE)``, which btrfs does for
   subvolumes in one transaction): ``ORIG`` now holds the snapshot's content, the spare the old
   origin;
3. delete the spare, i.e. the old origin: the point of no return;
4. delete the snapshot (merge consumes it, as LVM's does).

The spare keeps its name across the exchange, so its name alone does not say what it holds;
its subvolume ID does: IDs only grow, and the spare is made after the origin, so ``ORIG`` with
the higher ID means the exchange happened. ``snapkit recover`` reads it that way
(:mod:`snapkit.methods.btrfs.recover`). ``ORIG.snapkit-old-NAME`` is what the earlier, rename-based
merge left; recover still puts it back.

The undos look at what is there rather than trust what the steps reported: once the old origin
is gone (deleted, even if the delete then failed), the new origin is the only copy of the data
and nothing may exchange it away.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path

from snapkit.errors import OperationError, RefusedError
from snapkit.model import SnapshotRecord
from snapkit.plan import Step

AT_FDCWD = -100
RENAME_EXCHANGE = 2  # linux/fs.h

Exchange = Callable[[Path, Path], None]
Run = Callable[..., None]


def exchange(a: Path, b: Path) -> None:
    """Swap two names atomically. Through libc's ``renameat2`` (glibc >= 2.28) because neither
    Debian 12's coreutils nor its util-linux has a command for it (``mv --exchange``, ``exch``
    came later)."""
    libc = ctypes.CDLL(None, use_errno=True)
    call = libc.renameat2
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    if call(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), str(a), None, str(b))


def spare_name(origin: str, name: str) -> str:
    return f"{origin}.snapkit-new-{name}"


def legacy_name(origin: str, name: str) -> str:
    return f"{origin}.snapkit-old-{name}"


class Swap:
    """The merge's subvolume steps and their undos. Paths are under the private top-level
    mount ``top``, present from before the first of these steps to after the last."""

    def __init__(
        self,
        run: Run,
        swap: Exchange,
        delete: Callable[[Path], None],
        top: Path,
        record: SnapshotRecord,
    ) -> None:
        self.run, self.swap, self.delete = run, swap, delete
        self.origin, self.name = record.details["origin_subvol"], record.name
        self.subvol = record.details["subvol"]
        self.current, self.snap = top / self.origin, top / self.subvol
        self.spare = top / spare_name(self.origin, self.name)
        self.legacy = top / legacy_name(self.origin, self.name)
        self.swapped = self.committed = False

    def steps(self) -> tuple[Step, ...]:
        cur, spare, snap = self.current, self.spare, self.snap
        return (
            Step(
                f"btrfs subvolume snapshot {snap} {spare}",
                self.snapshot,
                self.unsnapshot,
                f"btrfs subvolume delete {spare}, unless it holds the old origin",
            ),
            Step(
                f"exchange {cur} and {spare} (renameat2 RENAME_EXCHANGE)",
                self.exchange,
                self.exchange_back,
                f"exchange them back, while {spare} exists",
            ),
            Step(
                f"btrfs subvolume delete {spare}, the old origin (the point of no return)",
                self.commit,
            ),
            Step(f"btrfs subvolume delete {snap}", lambda: self.delete(snap)),
        )

    def _past_no_return(self) -> bool:
        return self.committed or (self.swapped and not os.path.lexists(self.spare))

    def snapshot(self) -> None:
        if not os.path.lexists(self.snap):
            raise RefusedError(
                f"the snapshot subvolume {self.subvol} is gone",
                hint=f"forget it: snapkit snapshot discard {self.name}",
            )
        for left in (self.spare, self.legacy):
            if os.path.lexists(left):
                raise RefusedError(
                    f"{left.name} exists beside {self.origin}: an earlier merge did not finish",
                    hint="run 'snapkit recover', which settles it",
                )
        self.run("btrfs", "subvolume", "snapshot", str(self.snap), str(self.spare))

    def unsnapshot(self) -> None:
        if self.swapped:  # the exchange could not be undone: the spare is the old origin
            return
        self.delete(self.spare)

    def exchange(self) -> None:
        try:
            self.swap(self.current, self.spare)
        except OSError as exc:  # atomic: nothing was exchanged
            raise OperationError(
                f"exchange {self.current} and {self.spare}: {exc.strerror}",
                hint="see dmesg for the kernel's reason",
            ) from exc
        self.swapped = True

    def exchange_back(self) -> None:
        if not self.swapped:
            return
        if self._past_no_return():
            raise OperationError(
                f"not undone: {self.origin} already holds the content of {self.subvol} and its "
                "old content is deleted",
                hint=f"finish the merge with 'snapkit snapshot discard {self.name}'",
            )
        try:
            self.swap(self.current, self.spare)
        except OSError as exc:
            raise OperationError(
                f"{self.origin} holds the content of {self.subvol}; its old content is in "
                f"{self.spare.name} ({exc.strerror})",
                hint="run 'snapkit recover', which finishes the merge",
            ) from exc
        self.swapped = False

    def commit(self) -> None:
        self.run("btrfs", "subvolume", "delete", str(self.spare))
        self.committed = True


__all__ = ["Swap", "exchange", "legacy_name", "spare_name"]
