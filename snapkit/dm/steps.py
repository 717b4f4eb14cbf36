"""Plan steps for dm, loop and COW-file operations, each paired with its undo.

The descriptions are what ``--dry-run`` prints, so they name the exact ioctl (as the dmsetup
command that does the same) or command. Devices whose name is only known while the plan runs
(loop devices) are :class:`~snapkit.host.loopdev.LoopSlot` values and print as ``<loop of FILE>``.

Undos that resume a device are ``must_undo``: a device left suspended hangs every writer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from snapkit.dm.control import DmControl, resume_unchanged
from snapkit.dm.status import SnapshotUsage
from snapkit.dm.table import Table
from snapkit.errors import OperationError
from snapkit.host.loopdev import Files, Loops, LoopSlot
from snapkit.plan import Step
from snapkit.run import Executor

Progress = Callable[[float], None]


def table_text(table: Table) -> str:
    """A table on one line, for step descriptions."""
    return table.format().strip().replace("\n", "; ")


def create(dm: DmControl, name: str, uuid: str, *, keep: bool = False) -> Step:
    return Step(
        f"dmsetup create {name} --uuid {uuid} --notable",
        lambda: dm.create(name, uuid=uuid),
        None if keep else (lambda: dm.remove(name)),
        f"dmsetup remove {name}",
    )


def load(
    dm: DmControl, name: str, table: Callable[[], Table], text: str, *, ro: bool = False
) -> Step:
    """Load an inactive table; undo clears the inactive slot (the active table is untouched)."""
    flag = " --readonly" if ro else ""
    return Step(
        f"dmsetup load {name}{flag} --table '{text}'",
        lambda: dm.load(name, table(), read_only=ro),
        lambda: dm.clear(name),
        f"dmsetup clear {name}",
    )


def suspend(dm: DmControl, name: str, *, lockfs: bool = True) -> Step:
    """Suspend with lockfs (freezes a mounted filesystem); undo resumes the old table.
    ``lockfs=False`` when snapkit already froze the filesystem above (a stacked origin): on
    6.1 a lockfs suspend of a frozen filesystem's device fails with EBUSY."""
    flag = "" if lockfs else " --nolockfs"
    return Step(
        f"dmsetup suspend{flag} {name}",
        lambda: dm.suspend(name, lockfs=lockfs),
        lambda: resume_unchanged(dm, name),
        f"dmsetup clear {name}; dmsetup resume {name}",
        must_undo=True,
    )


def resume(dm: DmControl, name: str, undo: Step | None = None) -> Step:
    """Resume (swapping in the loaded table). ``undo``, if given, is how to revert the swap."""
    return Step(
        f"dmsetup resume {name}",
        lambda: dm.resume(name),
        undo.do if undo else None,
        undo.description if undo else "",
    )


def remove(dm: DmControl, name: str, restore: Callable[[], object] | None = None) -> Step:
    return Step(
        f"dmsetup remove {name}",
        lambda: _remove_if_present(dm, name),
        restore,
        f"recreate {name}" if restore else "",
    )


def _remove_if_present(dm: DmControl, name: str) -> None:
    if dm.info(name) is not None:
        dm.remove(name)


def cow_file(files: Files, path: Path, size: int) -> Step:
    return Step(
        f"create sparse file {path} ({size} bytes)",
        lambda: files.create_sparse(path, size),
        lambda: files.unlink(path),
        f"rm {path}",
    )


def unlink(files: Files, path: Path) -> Step:
    return Step(f"rm {path}", lambda: files.unlink(path))


def attach(loops: Loops, slot: LoopSlot) -> Step:
    def do() -> None:
        slot.device = loops.attach(slot.backing)

    def undo() -> None:
        for dev in loops.find(slot.backing) if slot.device is None else (slot.device,):
            loops.detach(dev)

    return Step(f"losetup --find --show {slot.backing}", do, undo, f"losetup --detach {slot}")


def detach_all(loops: Loops, backing: Path) -> Step:
    """Detach every loop device over ``backing`` (found by inode, so a reboot changes nothing)."""

    def do() -> None:
        for dev in loops.find(backing):
            loops.detach(dev)

    return Step(f"losetup --detach $(losetup --associated {backing})", do)


def set_ro(run: Executor, device: Callable[[], str], text: str, ro: bool) -> Step:
    flag, back = ("--setro", "--setrw") if ro else ("--setrw", "--setro")
    return Step(
        f"blockdev {flag} {text}",
        lambda: run.run(["blockdev", flag, device()]),
        lambda: run.run(["blockdev", back, device()]),
        f"blockdev {back} {text}",
    )


def wait_merged(
    dm: DmControl,
    name: str,
    *,
    progress: Progress | None = None,
    poll: float = 0.2,
    timeout: float | None = None,
) -> SnapshotUsage:
    """Poll ``name``'s snapshot-merge status until X == Z (every exception copied back)."""
    first: SnapshotUsage | None = None
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        lines = dm.status(name)
        usage = lines[0].status if lines else None
        if not isinstance(usage, SnapshotUsage):
            raise OperationError(f"{name} reports {usage} instead of merge progress")
        first = first or usage
        if progress is not None:
            from snapkit.dm.status import merge_progress

            progress(merge_progress(first, usage))
        if usage.merge_done:
            return usage
        if deadline is not None and time.monotonic() > deadline:
            raise OperationError(f"the merge into {name} did not finish within {timeout:g} s")
        time.sleep(poll)


__all__ = [
    "Progress",
    "attach",
    "cow_file",
    "create",
    "detach_all",
    "load",
    "remove",
    "resume",
    "set_ro",
    "suspend",
    "table_text",
    "unlink",
    "wait_merged",
]
