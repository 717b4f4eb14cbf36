"""The model side of ``vmtest difftest``: snapkit's offline dm-snapshot model, driven by a history.

It answers each operation with what the guest executor (``vmtests.guest.difftest.dmexec``) answers
for the kernel: a result word or digest, the status line of every dm device, and at check
points the digests of every device and backing file. Everything the kernel would read back
from disk, the model reads back from its bytes too: a reload or a merge builds the snapshot
again from its COW, which is what makes the comparison a byte-exactness check of the store.
"""

from __future__ import annotations

from typing import Any

from snapkit.cow.device import MemDevice
from snapkit.cow.model import Origin, Snapshot, SnapshotIOError
from vmtests.difftest.ops import ORIGIN, History, Kind, Merge, Op, Read, Reload, Snap, Write
from vmtests.guest.difftest.dmexec import ORIGIN_TAG, SECTOR, digest, pattern

Observation = dict[str, Any]


class ModelSide:
    def __init__(self, history: History) -> None:
        self.sectors = history.origin_sectors
        self.size = self.sectors * SECTOR
        data = pattern(ORIGIN_TAG, 0, self.size)
        self.origin = Origin(MemDevice(data))
        self.cows: dict[int, tuple[MemDevice, Kind, int]] = {}
        self.snaps: dict[int, Snapshot] = {}  # the snapshot devices that exist
        self.lost_merge = False  # an interrupted merge's state matched no batch boundary
        # Stores that were invalidated. Only their header is compared from then on: the kernel
        # never reads the rest again, and what it wrote there depends on timing. Exceptions
        # still in flight when the store invalidates (the other chunks of the same write)
        # complete after it, so their metadata is never written, while the model, which runs
        # one chunk at a time, committed them first; for a transient store the same goes
        # for the data of partial-chunk writes in flight, so nothing of it is compared.
        self.dead: set[int] = set()
        self.stopped_midway = 0  # interrupted merges the kernel stopped between two batches

    def apply(self, op: Op, kernel_check: Observation | None = None) -> str:
        """Run one operation; an interrupted merge needs the kernel's check to know where the
        kernel stopped (any batch boundary is legal, and the model must stop at the same)."""
        if isinstance(op, Snap):
            index = len(self.cows)
            cow = MemDevice(op.cow_sectors * SECTOR)
            self.cows[index] = (cow, op.kind, op.chunk)
            self.snaps[index] = self.origin.snapshot(cow, op.kind, op.chunk)
            return "ok"
        if isinstance(op, Write):
            return self._write(op)
        if isinstance(op, Read):
            return self._read(op.dev, op.sector * SECTOR, op.sectors * SECTOR)
        if isinstance(op, Reload):
            keep = [i for i in self.snaps if self.cows[i][1] != "N"]
            self.origin = Origin(self.origin.dev)
            self.snaps = {}
            for index in keep:
                self._activate(index)
            return "ok"
        return self._merge(op, kernel_check)

    def _write(self, op: Write) -> str:
        data = pattern(op.tag, op.sector * SECTOR, op.sectors * SECTOR)
        if op.dev == ORIGIN:
            self.origin.write(op.sector * SECTOR, data)
            return "ok"
        try:
            self.snaps[op.dev].write(op.sector * SECTOR, data)
        except SnapshotIOError:
            return "EIO"
        return "ok"

    def _read(self, dev: int, start: int, length: int) -> str:
        try:
            if dev == ORIGIN:
                return digest(self.origin.read(start, length))
            return digest(self.snaps[dev].read(start, length))
        except SnapshotIOError:
            return "EIO"

    def _activate(self, index: int) -> Snapshot:
        cow, kind, chunk = self.cows[index]
        snap = self.snaps[index] = self.origin.snapshot(cow, kind, chunk)
        return snap

    def _merge(self, op: Merge, kernel_check: Observation | None) -> str:
        """The snapshot device goes; snapshot-merge reads the store back from the COW."""
        self.origin.snapshots.remove(self.snaps.pop(op.snap))
        snap = self._activate(op.snap)
        if not snap.valid:
            return "Invalid"  # the kernel refuses, and the snapshot is put back as it was
        if op.stop is None:
            self.origin.merge(snap)
            del self.snaps[op.snap]
            return "merged"
        want = (kernel_check or {}).get("files")
        if want is None:  # no kernel to follow: stop after ``stop`` batches
            self.origin.merge(snap, max_batches=op.stop)
        else:
            done, batches = False, 0
            while want != self.files() and not done:
                done = self.origin.merge(snap, max_batches=1)
                batches += 1
            self.lost_merge = want != self.files()
            self.stopped_midway += bool(batches) and not done
        if snap in self.origin.snapshots:
            self.origin.snapshots.remove(snap)
        snap.merging = False
        self._activate(op.snap)
        return "stopped"

    # -- observation -----------------------------------------------------------------------
    def statuses(self) -> dict[str, str]:
        out = {"origin": f"0 {self.sectors} snapshot-origin"}
        for index, snap in sorted(self.snaps.items()):
            out[f"s{index}"] = f"0 {self.sectors} snapshot {snap.status()}"
        return out

    def files(self) -> dict[str, str]:
        assert isinstance(self.origin.dev, MemDevice)
        out = {"origin": digest(self.origin.dev.data)}
        for index, (cow, _, _) in self.cows.items():
            out[f"cow{index}"] = digest(cow.data)
        return out

    def check(self) -> Observation:
        devices = {"origin": self._read(ORIGIN, 0, self.size)}
        for index in sorted(self.snaps):
            devices[f"s{index}"] = self._read(index, 0, self.size)
        heads = {
            f"cow{i}": digest(cow.data[: chunk * SECTOR])
            for i, (cow, _, chunk) in self.cows.items()
        }
        return {"devices": devices, "files": self.files(), "heads": heads}

    def note_invalid(self) -> None:
        """Remember every store that was ever invalidated (see ``dead``)."""
        self.dead.update(i for i, snap in self.snaps.items() if not snap.valid)

    def kind(self, index: int) -> Kind:
        return self.cows[index][1]

    def cow_bytes(self, name: str) -> bytes:
        if name == "origin":
            assert isinstance(self.origin.dev, MemDevice)
            return bytes(self.origin.dev.data)
        return bytes(self.cows[int(name.removeprefix("cow"))][0].data)


__all__ = ["ModelSide", "Observation"]
