"""Where one crash-state kind lives: one logged disk cut into slices, and its names.

Why one disk: a crash state is a point in time across every device snapkit writes to, and the
log must put their writes in one order. So the devices are ``linear`` slices of a single
``log-writes`` device over the kind's data disk, as partitions of one disk are: the keep slice
(an ext4 holding snapkit's state directory, its COW files and nothing else), a small slice for
the state-file control's prepared device, and the origin slice (the disk ``device prepare``
takes for dm and dm-direct, the PV for lvm). The cost of that choice: a flush of any slice is
a flush of the disk, so states in which one device flushed and another did not are not made.

snapkit's ``device prepare`` takes plain disks, partitions and loop devices, never a dm device
(it would snapshot that directly, and a dm table names its disk by a number that a reboot
changes). So for dm and dm-direct the origin and control slices are each attached as a loop
device (``--direct-io``: no page cache of its own between the filesystem and the logged disk;
a flush through it is a flush of the slice), and snapkit finds them again by their backing
path, as it finds any loop device after a reboot. LVM takes the origin slice itself as its PV
(a loop over it would show LVM the same PV twice); its control slice is a loop as for dm.

The same slices (and loops) are made again, under the same names, over each replayed state:
to snapkit a judged state looks like the machine after a reboot. Standard library and snapkit
only.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from snapkit.dm.control import IoctlDm
from snapkit.dm.table import parse_table
from vmtests.guest import loopctl, mountctl
from vmtests.guest.faults import kind
from vmtests.guest.faults.kind import dm_names
from vmtests.guest.proc import CommandError, log

MIB = 1 << 20
KEEP_MIB, CTL_MIB, ORIGIN_MIB = 96, 8, 256
DISK_MIB = KEEP_MIB + CTL_MIB + ORIGIN_MIB
LOG_MIB = 2048  # sparse: what a lifecycle logs is far less (a full log stops logging: refused)
MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F", "-E", "nodiscard"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-K"],
    "btrfs": ["mkfs.btrfs", "-q", "-f", "-K"],
}
KEEP_OPTS = "noauto_da_alloc"  # ext4's rename heuristic off: a missing fsync is not masked


@dataclass(frozen=True)
class Kind(kind.Kind):
    """A faults kind's names (keep and state directories, mount points, the prepared origin
    ``o<kid>``, ``vg<kid>``, the origin's device), plus the logged disk's."""

    snapped: bool = False

    @classmethod
    def of(cls, spec: dict[str, Any]) -> Kind:
        return cls(spec["kid"], spec["fs"], spec["method"])

    @property
    def lvm(self) -> bool:
        """lvm or lvm-thin (``thin.py``): the origin slice is a PV, the origin the LV lv0."""
        return self.method in ("lvm", "lvm-thin")

    @property
    def base_dev(self) -> str:
        """The faults kind's, but lvm-thin's origin is an LV too (the faults kinds have none)."""
        return f"/dev/{self.vg}/lv0" if self.lvm else super().base_dev

    # the disks, by serial
    @property
    def data_disk(self) -> str:
        return f"/dev/vmtest/{self.kid}-d"

    @property
    def log_disk(self) -> str:
        return f"/dev/vmtest/{self.kid}-l"

    @property
    def replay_file(self) -> str:
        """The replay disk: a file on tmpfs (``judge.Replay`` says why not a virtio disk)."""
        return f"/tmp/{self.kid}.replay"

    # dm names: the logger, the throwaway layer over a replayed state, the slices
    @property
    def lw(self) -> str:
        return f"{self.kid}lw"

    @property
    def layer(self) -> str:
        return f"{self.kid}t"

    def slices(self) -> list[tuple[str, int, int]]:
        """(dm name, first sector, sectors) of each slice, in disk order."""
        out, at = [], 0
        for suffix, mib in (("k", KEEP_MIB), ("x", CTL_MIB), ("o", ORIGIN_MIB)):
            out.append((f"{self.kid}{suffix}", at, mib * MIB // 512))
            at += mib * MIB // 512
        return out

    @property
    def keep_dev(self) -> str:
        return f"/dev/mapper/{self.kid}k"

    @property
    def ctl_slice(self) -> str:
        return f"/dev/mapper/{self.kid}x"

    @property
    def origin_slice(self) -> str:
        return f"/dev/mapper/{self.kid}o"

    @property
    def ctl_state(self) -> str:
        return f"{self.keep}/ctl"

    @property
    def ctl_prepared(self) -> str:
        return f"x{self.kid}"

    @property
    def snapshots(self) -> tuple[str, str]:
        """The lifecycle's two snapshots: the one merged, the one discarded."""
        return self.name, f"t{self.kid}"

    def loop_slices(self) -> tuple[str, ...]:
        """The slices a direct-io loop is attached over (``make_slices``, ``teardown``)."""
        return (self.ctl_slice,) if self.lvm else (self.ctl_slice, self.origin_slice)

    def mountpoints(self) -> tuple[str, ...]:
        """Where the kind mounts filesystems besides the keep slice (snapshot first)."""
        return (self.snap_mnt, self.mnt)

    def env_with(self, state: str | None = None, **extra: str) -> dict[str, str]:
        return {**self.env, "SNAPKIT_STATE_DIR": state or self.state, **extra}


def dm_create(name: str, table: str) -> None:
    """``dmsetup create NAME --table TABLE`` by ioctl from this process: a judge makes and
    removes a handful of devices per state, and under TCG each dmsetup costs ~0.3 s."""
    with IoctlDm() as dm:
        dm.create(name)
        dm.load(name, parse_table(table))
        dm.resume(name)
    log(f"dm create {name}: {table}")


def dm_remove(name: str) -> bool:
    try:
        with IoctlDm() as dm:
            dm.remove(name)
    except Exception as exc:
        log(f"dm remove {name}: {exc}")
        return False
    log(f"dm remove {name}")
    return True


def make_slices(k: Kind, under: str) -> None:
    for name, start, size in k.slices():
        dm_create(name, f"0 {size} linear {under} {start}")
    for path in k.loop_slices():
        loopctl.attach(path, direct_io=True)  # losetup --direct-io=on -f PATH


loop_of = loopctl.loop_of


def mount_keep(k: Kind) -> None:
    os.makedirs(k.keep, exist_ok=True)
    mountctl.mount("ext4", k.keep_dev, k.keep, KEEP_OPTS)


def teardown(k: Kind, *lower: str) -> None:
    """Take everything of the kind out of the kernel, as a power-off does: mounts, the LVM
    and snapkit devices, loop devices on the keep slice, the keep mount, the slices, then
    ``lower`` (the logger or the layer), in that order.

    The LVs go by ioctl like every other dm device, not by ``vgchange -an`` (0.4-0.6 s a
    state under TCG): a power-off deactivates nothing either, and deactivation writes no
    metadata. What LVM made besides the dm devices, the ``/dev/VG`` links, goes too -- a
    rebooted machine's /dev has none; the judged state's ``vgchange -ay`` (the boot's
    activation) makes them again."""
    for mnt in k.mountpoints():
        unmount(mnt)
    ours = {name for name, _, _ in k.slices()} | {k.lw, k.layer}
    for _ in range(5):  # what sits on something goes first: retry until none is left
        names = [n for n in dm_names() if k.kid in n and n not in ours]
        if not names:
            break
        for name in names:
            dm_remove(name)
    if k.lvm or k.method == "group-lvm":  # a VG of its own: drop its /dev links
        _drop_vg_links(f"/dev/{k.vg}")
    for loop, backing in loopctl.loops().items():
        if backing.startswith(k.keep + "/"):
            _detach(loop)
    unmount(k.keep)
    for path in k.loop_slices():
        loop = loop_of(path)
        if loop:
            _detach(loop)
    for name, _, _ in reversed(k.slices()):
        dm_remove(name)
    for name in lower:
        dm_remove(name)


def _drop_vg_links(folder: str) -> None:
    """The links LVM made for a VG's LVs (``/dev/VG/LV``) and their folder, if they are
    only links: what is not is left, and logged."""
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in entries:
        path = os.path.join(folder, name)
        if os.path.islink(path):
            os.unlink(path)
        else:
            log(f"teardown: {path} is not a link; left")
    with contextlib.suppress(OSError):
        os.rmdir(folder)


def unmount(mnt: str) -> None:
    """``umount MNT`` whose failure is gone past, as ``run(..., check=False)`` did: it is
    logged, and what needs the mount gone fails in turn (and is logged too)."""
    with contextlib.suppress(CommandError):
        mountctl.umount(mnt)


def _detach(loop: str) -> None:
    try:
        loopctl.detach(loop)
    except OSError as exc:
        log(f"loop detach {loop}: {exc}")
