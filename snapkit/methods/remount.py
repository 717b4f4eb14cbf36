"""``remount-ro``: the fallback when nothing else fits: ``mount -o remount,ro``, copy, remount rw.

While the filesystem is read-only its device *is* a point-in-time copy, clean on disk (a
read-only remount syncs and, for journalling filesystems, leaves the journal clean). Create:

1. ``mount -o remount,ro MP`` (undo, always: ``mount -o remount,rw MP``);
2. either run the user's command (``--command``/``-- CMD``, with ``SNAPKIT_DEVICE`` set) to copy
   the device elsewhere, or copy the device into ``--cow-dir/NAME.img`` (sparse; a copy that
   fails part-way is removed);
3. ``mount -o remount,rw MP``.

What it costs: unlike a freeze, writers do not wait; a write during the window *fails* with
EROFS, and the remount itself fails (EBUSY) while any file is open for writing. snapkit then
changes nothing and says so. Use it for filesystems that are mostly idle.

The record keeps the filesystem type, so that ``snapshot mount`` can mount an xfs image
beside its origin (same uuid: ``nouuid``).

Merge copies the image back onto the device, so the origin must not be mounted; discard deletes
the image. With a user command, the copy lives outside: merge is refused, discard forgets.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from snapkit.errors import RefusedError, UsageError
from snapkit.host.cowdir import check_cow_dir
from snapkit.host.loopdev import Files
from snapkit.host.target import mounts_of
from snapkit.model import CreateRequest, SnapshotRecord, SnapshotStatus, State, Target
from snapkit.plan import Plan, Step
from snapkit.run import Executor
from snapkit.validate import dm_name

if TYPE_CHECKING:  # only annotations need it: keeps the import graph one-way
    from snapkit.methods.base import Host

COPY_TIMEOUT = None  # a whole device: as long as it takes


class RemountMethod:
    name: ClassVar[str] = "remount-ro"
    records_first: ClassVar[bool] = False

    def __init__(self, host: Host) -> None:
        self.executor: Executor = host.run
        self.files: Files = host.files

    def unsuitable(self, target: Target) -> str | None:
        if target.mountpoint is None:
            return f"{target.device} is not mounted"
        return None

    def plan_create(self, request: CreateRequest) -> tuple[Plan, SnapshotRecord]:
        target = request.target
        if target.mountpoint is None:
            raise RefusedError(f"{target.device} is not mounted", hint="copy the device directly")
        mp, device, name = str(target.mountpoint), str(target.device), dm_name(request.name)
        run = self.executor.run
        ro, rw = ["mount", "-o", "remount,ro", mp], ["mount", "-o", "remount,rw", mp]
        # the copy has the origin's uuid: 'snapshot mount' adds nouuid for xfs from this
        details = {"mountpoint": mp, "fstype": target.fstype or ""}
        if request.command:
            argv = list(request.command)
            env = {"SNAPKIT_DEVICE": device, "SNAPKIT_MOUNTPOINT": mp}
            copy = Step(f"run {' '.join(argv)}", lambda: run(argv, env=env, timeout=COPY_TIMEOUT))
            details["command"] = " ".join(argv)
            image = ""
        elif request.cow_dir is not None:
            image_path = request.cow_dir / f"{name}.img"
            if os.path.lexists(image_path):
                raise RefusedError(f"{image_path} exists", hint="choose another name")
            check_cow_dir(request.cow_dir, target)  # it may not exist yet: the copy makes it
            copy = self._copy_step(device, image_path)
            image = str(image_path)
        else:
            raise UsageError(
                "remount-ro needs somewhere to copy to",
                hint="give --cow-dir DIR (an image file) or a command after '--'",
            )
        steps = (
            Step(" ".join(ro), lambda: run(ro), lambda: run(rw), " ".join(rw), must_undo=True),
            copy,
            Step(" ".join(rw), lambda: run(rw)),
        )
        record = SnapshotRecord(
            name=name,
            method=self.name,
            origin=device,
            device=image,
            created_at=time.time(),
            details=details,
        )
        return Plan(f"read-only copy of {mp}", steps), record

    def _copy_step(self, device: str, image: Path) -> Step:
        """cp into the image; its undo always runs, because a cp that fails part-way (a full
        --cow-dir) leaves a partial image that would block the next create of the same name.
        It removes only a file this step made (O_EXCL): one already there is refused."""
        cp = ["cp", "--sparse=always", device, str(image)]
        rm = ["rm", "-f", str(image)]
        began: list[bool] = []

        def copy() -> None:
            try:
                self.files.create_sparse(image, 0)  # and --cow-dir, if it is not there yet
            except FileExistsError:
                raise RefusedError(f"{image} exists", hint="choose another name") from None
            began.append(True)
            self.executor.run(cp, timeout=COPY_TIMEOUT)

        def remove() -> None:
            if began:
                self.executor.run(rm)

        return Step(" ".join(cp), copy, remove, " ".join(rm), must_undo=True)

    def status(self, record: SnapshotRecord) -> SnapshotStatus:
        if not record.device:
            return SnapshotStatus(record, State.ACTIVE, None, None, "copied by a user command")
        if not os.path.exists(record.device):
            return SnapshotStatus(record, State.INVALID, None, None, "the image is gone")
        return SnapshotStatus(record, State.ACTIVE, None, None)

    def plan_merge(self, record: SnapshotRecord) -> Plan:
        if not record.device:
            raise RefusedError(f"{record.name} was copied by a user command; snapkit cannot")
        from snapkit.host.target import block_devnum

        dev = block_devnum(record.origin)
        mounted = mounts_of(dev) if dev is not None else ()
        if mounted:
            raise RefusedError(
                f"{record.origin} is mounted at {mounted[0].mountpoint}",
                hint="umount it first; snapkit never unmounts your filesystem",
            )
        dd = [
            "dd",
            f"if={record.device}",
            f"of={record.origin}",
            "bs=1M",
            "conv=fsync",
            "status=none",
        ]
        rm = ["rm", "-f", record.device]
        run = self.executor.run
        return Plan(
            f"copy {record.device} back onto {record.origin}",
            (
                Step(" ".join(dd), lambda: run(dd, timeout=COPY_TIMEOUT)),
                Step(" ".join(rm), lambda: run(rm)),
            ),
        )

    def plan_discard(self, record: SnapshotRecord, *, force: bool = False) -> Plan:
        if not record.device:
            return Plan(f"forget {record.name}", ())
        rm = ["rm", "-f", record.device]
        return Plan(
            f"discard {record.device}", (Step(" ".join(rm), lambda: self.executor.run(rm)),)
        )


__all__ = ["RemountMethod"]
