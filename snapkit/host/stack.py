"""The device stack under a mounted filesystem: from the device it is mounted from, down its
device-mapper tables to the layer a method can snapshot.

A desktop's ``/home`` is often ext4 on a dm-crypt mapping on an LVM logical volume. The
filesystem's own device (the crypt mapping) cannot be snapshotted, and LVM's ``lvcreate -s``
of the LV below freezes nothing, because the filesystem is not on the LV (measured on 6.1: the
snapshot's ext4 needs a journal recovery and misses the last acknowledged writes). So snapkit
walks down: through *pass-through* layers (a one-line ``crypt`` or ``linear`` table) to the
first layer that is *snapshottable*: an LVM logical volume, or a device ``snapkit device
prepare`` made. A layer that is neither (md RAID, multipath, a striped or raid table, a plain
partition at the bottom) stops the walk, and the refusal names it.

The kernel is the source of truth: tables come from the dm ioctl (so a crypt key stays a
:class:`~snapkit.dm.table.Secret` in memory), devices from ``/sys/dev/block``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from snapkit.dm.control import DmControl
from snapkit.dm.naming import Role, parse_uuid
from snapkit.dm.table import Crypt, DevNum, Linear, Table
from snapkit.errors import RefusedError
from snapkit.host.target import SYS_BLOCK, BlockInfo, block_info
from snapkit.model import Target

MAX_DEPTH = 16  # a stack deeper than this is a loop in sysfs, not a real stack


class Kind(enum.StrEnum):
    """What one layer is, as far as snapshotting goes."""

    CRYPT = "crypt"  # pass-through: rebuilt over the snapshot with the same key
    LINEAR = "linear"  # pass-through: a one-line linear table snapkit did not make
    LV = "lv"  # snapshottable: lvm, lvm-thin
    PREPARED = "prepared"  # snapshottable: dm, dm-direct (made by 'snapkit device prepare')
    STOP = "stop"  # neither: the walk ends here, and so does snapkit


PASS_THROUGH = (Kind.CRYPT, Kind.LINEAR)


@dataclass(frozen=True)
class Layer:
    kind: Kind
    info: BlockInfo
    table: Table | None  # the live table of a dm layer (a crypt key stays a Secret)
    why: str = ""  # for STOP: what the layer is

    @property
    def path(self) -> Path:
        return self.info.path

    @property
    def name(self) -> str:
        return self.info.dm_name or self.info.kname

    def describe(self) -> str:
        what = {
            Kind.CRYPT: "dm-crypt",
            Kind.LINEAR: "dm linear",
            Kind.LV: "LVM logical volume",
            Kind.PREPARED: "device prepared by snapkit",
            Kind.STOP: self.why,
        }[self.kind]
        return f"{self.path} ({what})"


@dataclass(frozen=True)
class Stack:
    """The layers from the filesystem's device (``layers[0]``) down to the first layer that is
    not a pass-through one (``layers[-1]``, the base)."""

    layers: tuple[Layer, ...]

    @property
    def base(self) -> Layer:
        return self.layers[-1]

    @property
    def above(self) -> tuple[Layer, ...]:
        """The pass-through layers over the base, top first."""
        return self.layers[:-1]

    @property
    def stacked(self) -> bool:
        return len(self.layers) > 1

    def describe(self) -> str:
        return " on ".join(layer.describe() for layer in self.layers)

    def base_target(self, top: Target) -> Target:
        """What a block-level method snapshots: the base, with the top's filesystem type and
        no mount point (nothing is mounted from the base itself)."""
        dev = self.base.info.devnum
        return Target(self.base.path, None, top.fstype, (dev.major, dev.minor))


def _only(table: Table | None) -> object | None:
    return table.lines[0].target if table is not None and len(table.lines) == 1 else None


def classify(info: BlockInfo, table: Table | None) -> Layer:
    """One layer, from what sysfs and its dm table say."""
    uuid = info.dm_uuid or ""
    if info.dm_name is None:
        if info.kname.startswith("md"):
            return Layer(Kind.STOP, info, None, "md RAID")
        what = "partition" if info.partition_start is not None else "disk"
        return Layer(Kind.STOP, info, None, f"a plain {what}, not a device-mapper device")
    if uuid.startswith("LVM-"):
        return Layer(Kind.LV, info, table)
    parsed = parse_uuid(uuid)
    if parsed is not None and parsed[1] is Role.ORIGIN:
        return Layer(Kind.PREPARED, info, table)
    target = _only(table)
    if isinstance(target, Crypt):
        return Layer(Kind.CRYPT, info, table)
    if isinstance(target, Linear) and parsed is None:
        return Layer(Kind.LINEAR, info, table)
    if uuid.startswith("mpath-"):
        return Layer(Kind.STOP, info, table, "multipath")
    kinds = ",".join(line.target.type_name for line in table) if table else "no"
    return Layer(Kind.STOP, info, table, f"a dm device with a {kinds} table")


def lower_device(layer: Layer) -> DevNum | None:
    """The device a pass-through layer maps, as its table names it (MAJ:MIN)."""
    target = _only(layer.table)
    if isinstance(target, Crypt | Linear) and isinstance(target.device, DevNum):
        return target.device
    return None


def resolve_stack(
    top: Target, dm: DmControl, *, sys_block: Path = SYS_BLOCK, depth: int = MAX_DEPTH
) -> Stack:
    """The stack under ``top``; RefusedError if a layer's device cannot be read."""
    layers: list[Layer] = []
    dev: DevNum | None = DevNum(*top.devnum)
    while dev is not None and len(layers) < depth:
        info = block_info(dev, sys_block=sys_block)
        if info is None:
            raise RefusedError(f"the kernel knows no block device {dev} under {top.device}")
        table = dm.table(info.dm_name) if info.dm_name is not None else None
        layer = classify(info, table)
        layers.append(layer)
        dev = lower_device(layer) if layer.kind in PASS_THROUGH else None
    return Stack(tuple(layers))


def refuse_unsnapshottable(stack: Stack) -> None:
    """A stacked filesystem whose walk ended at a layer no method can snapshot."""
    if stack.base.kind in PASS_THROUGH or stack.base.kind is Kind.STOP:
        stops = stack.base
        hint = (
            "put the device under it in LVM, or prepare it once with 'snapkit device prepare' "
            "(close the layers above it first, then reopen them over /dev/mapper/NAME)"
        )
        if stops.why in ("md RAID", "multipath"):
            hint = f"snapkit cannot snapshot through {stops.why}; snapshot a layer under it"
        raise RefusedError(
            f"{stack.layers[0].path} sits on {stack.describe()}: {stops.path} stops the walk",
            hint=hint,
        )


__all__ = [
    "PASS_THROUGH",
    "Kind",
    "Layer",
    "Stack",
    "classify",
    "lower_device",
    "refuse_unsnapshottable",
    "resolve_stack",
]
