"""A throwaway writable layer under ``snapshot mount`` of a read-only point-in-time copy.

Why: a frozen xfs keeps a dirty log and a frozen btrfs a tree-log (measured on 6.1); mounting
their copy means replaying that log, and dm-direct's copy is the read-only base device, which
cannot take the replay ("write access unavailable" / "log replay required on RO media"). Mounting
with norecovery/nologreplay would hide acknowledged writes. So the mount goes through a dm
``snapshot`` target over the read-only view, with a transient store (``N``) on a loop over a
sparse file beside the snapshot's COW: the log is replayed into that file and thrown away with
it, and the copy itself is never written -- the recipe the campaign oracle measured
(vmtests/guest/check.py, "oracle-layer").

The layer is named after its snapshot (``NAME-layer``, dm uuid ``SNAPKIT-NAME-layer``) and its
file sits at a path derived from the snapshot's COW file (``NAME.layer``), so teardown finds it
from the record alone, even when the record lost its ``layer`` keys or after a reboot. It
lives until the snapshot is merged, discarded or recovered, which refuse while it is mounted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from snapkit.dm import steps
from snapkit.dm.control import DmControl
from snapkit.dm.naming import UUID_PREFIX
from snapkit.dm.table import DevNum, Snapshot, Store, Table
from snapkit.errors import RefusedError
from snapkit.host.loopdev import LoopSlot
from snapkit.host.target import Mount, mounts_of
from snapkit.methods.base import Host
from snapkit.methods.dm.shared import DmDetails
from snapkit.model import SnapshotRecord
from snapkit.plan import Step
from snapkit.validate import SECTOR, dm_name

# Filesystems whose frozen copy keeps a log that a mount must replay (see the docstring).
REPLAYS_LOG = frozenset({"xfs", "btrfs"})
ROLE = "layer"  # the uuid's role word; snapkit.dm.naming.Role has no LAYER member yet
SUFFIX = ".layer"
CHUNK = 8  # sectors: the smallest chunk, the least copied per replayed block
KEYS = ("layer", "layer_cow")  # what the record says of a built layer (status --json details)
MAPPER = "/dev/mapper/"


@dataclass(frozen=True)
class Layer:
    """Where a snapshot's layer lives: its dm name, the view it covers, its sparse file."""

    snapshot: str
    view: str  # the read-only device, /dev/mapper/NAME
    cow_file: Path
    sectors: int

    @property
    def name(self) -> str:
        return dm_name(f"{self.snapshot}-{ROLE}", what="layer name")

    @property
    def device(self) -> str:
        return MAPPER + self.name

    @property
    def uuid(self) -> str:
        return f"{UUID_PREFIX}{self.snapshot}-{ROLE}"

    @classmethod
    def of(cls, record: SnapshotRecord) -> Layer:
        """The layer of a dm-direct ``record``: as big as the view, beside the COW file."""
        d = DmDetails.of(record)
        return cls(record.name, record.device, d.cow_file.with_suffix(SUFFIX), d.table.size)


def needs_layer(fstype: str, read_only: bool) -> bool:
    return read_only and fstype in REPLAYS_LOG


def recorded(record: SnapshotRecord, layer: Layer) -> SnapshotRecord:
    keys = dict(zip(KEYS, (layer.device, str(layer.cow_file)), strict=True))
    return replace(record, details={**record.details, **keys})


def forgotten(record: SnapshotRecord) -> SnapshotRecord:
    return replace(record, details=without_keys(record.details))


def without_keys(details: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in details.items() if k not in KEYS}


def refuse_if_mounted(dm: DmControl, layer: Layer, op: str) -> None:
    """A mounted layer cannot be removed, and removing the view under it is what every
    merge/discard starts with: refuse before anything changes."""
    info = dm.info(layer.name)
    if info is None or not info.open_count:
        return
    where = next((m.mountpoint for m in _mounts(info.dev)), None)
    shown = f" at {where}" if where else ""
    raise RefusedError(
        f"{op} refused: snapshot {layer.snapshot} is mounted{shown} (through {layer.device})",
        hint=f"umount {where or layer.device} and run it again",
    )


def _mounts(dev: DevNum) -> tuple[Mount, ...]:
    try:
        return mounts_of(dev)
    except OSError:
        return ()


def build(host: Host, layer: Layer) -> list[Step]:
    """Sparse file, loop, ``snapshot VIEW LOOP N 8``; each undone if a later step fails."""
    dm, slot = host.dm, LoopSlot(layer.cow_file)
    text = f"0 {layer.sectors} snapshot {layer.view} {slot} N {CHUNK}"
    return [
        *_leftovers(host, layer),
        steps.cow_file(host.files, layer.cow_file, layer.sectors * SECTOR),
        steps.attach(host.loops, slot),
        steps.create(dm, layer.name, layer.uuid),
        steps.load(dm, layer.name, _table(layer, slot), text),
        steps.resume(dm, layer.name),
    ]


def _leftovers(host: Host, layer: Layer) -> list[Step]:
    """What a build cut short by a crash left (no device, but a loop or the file)."""
    s = []
    if host.loops.find(layer.cow_file):
        s.append(steps.detach_all(host.loops, layer.cow_file))
    if host.files.exists(layer.cow_file):
        s.append(steps.unlink(host.files, layer.cow_file))
    return s


def teardown(host: Host, layer: Layer) -> list[Step]:
    """Remove whatever of the layer exists, device first. Each step's undo puts its part back
    (an empty layer: the replay it held is thrown away either way), so a merge or discard
    that fails after it leaves a layer as usable as before."""
    dm, s = host.dm, []
    slot = LoopSlot(layer.cow_file)
    found = host.loops.find(layer.cow_file)
    slot.device = found[0] if found else None
    if dm.info(layer.name) is not None:
        table = _table(layer, slot)

        def rebuild() -> None:
            dm.create(layer.name, uuid=layer.uuid)
            dm.load(layer.name, table())
            dm.resume(layer.name)

        s.append(steps.remove(dm, layer.name, rebuild))
    for loop in found:

        def reattach() -> None:
            slot.device = host.loops.attach(layer.cow_file)

        back = f"losetup --find --show {layer.cow_file}"
        s.append(Step(f"losetup --detach {loop}", _detach(host, loop), reattach, back))
    if host.files.exists(layer.cow_file):
        size = layer.sectors * SECTOR
        files, path = host.files, layer.cow_file
        again = f"create sparse file {path} ({size} bytes)"
        s.append(
            Step(
                f"rm {path}",
                lambda: files.unlink(path),
                lambda: files.create_sparse(path, size),
                again,
            )
        )
    return s


def _detach(host: Host, loop: Path) -> Callable[[], None]:
    return lambda: host.loops.detach(loop)


def _table(layer: Layer, slot: LoopSlot) -> Callable[[], Table]:
    """Built when its step runs: the loop device is known only then."""

    def table() -> Table:
        snap = Snapshot(layer.view, str(slot.path), Store.TRANSIENT, CHUNK)
        return Table.single(layer.sectors, snap)

    return table


__all__ = [
    "KEYS",
    "REPLAYS_LOG",
    "Layer",
    "build",
    "forgotten",
    "needs_layer",
    "recorded",
    "refuse_if_mounted",
    "teardown",
    "without_keys",
]
