"""The block model against a trivially correct shadow, under random I/O, merges and crashes.

The shadow is just bytes: the origin, and for each snapshot the origin as it was when the
snapshot was taken plus that snapshot's own writes. Whatever the model does with chunks,
areas and batches, every device must read back as the shadow says.
"""

from __future__ import annotations

from dataclasses import dataclass

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from snapkit.cow.device import MemDevice
from snapkit.cow.model import Kind, Origin, Snapshot, SnapshotIOError, split
from snapkit.cow.store import PersistentStore

SECTOR = 512


@dataclass
class Shadow:
    snap: Snapshot
    view: bytearray  # what the snapshot must read as while it is valid


def _reload(origin_dev: MemDevice, snaps: list[Snapshot]) -> tuple[Origin, list[Snapshot]]:
    """A crash: only bytes survive. Persistent snapshots are activated again from their COW."""
    origin = Origin(MemDevice(bytes(origin_dev.data)))
    fresh = []
    for snap in snaps:
        if snap.kind == "N":
            continue
        assert isinstance(snap.cow, MemDevice)
        fresh.append(origin.snapshot(MemDevice(bytes(snap.cow.data)), snap.kind, 8))
    return origin, fresh


class CowMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.origin: Origin
        self.shadow_origin: bytearray
        self.shadows: list[Shadow] = []

    @initialize(sectors=st.integers(min_value=40, max_value=400), seed=st.integers(0, 255))
    def start(self, sectors: int, seed: int) -> None:
        data = bytes((seed + i * 7) % 251 for i in range(sectors * SECTOR))
        self.origin = Origin(MemDevice(data))
        self.shadow_origin = bytearray(data)

    # Chunks of 1 and 2 sectors (which the kernel takes on 512-byte devices) give areas of 32
    # and 64 entries, so a small test crosses metadata areas; 8 and 16 are LVM's sizes.
    @rule(
        kind=st.sampled_from(["P", "PO", "N"]),
        chunk=st.sampled_from([1, 2, 8, 16]),
        cow_chunks=st.integers(min_value=3, max_value=160),
    )
    def take_snapshot(self, kind: Kind, chunk: int, cow_chunks: int) -> None:
        if len(self.shadows) >= 3:
            return
        cow = MemDevice(cow_chunks * chunk * SECTOR)
        snap = self.origin.snapshot(cow, kind, chunk)
        self.shadows.append(Shadow(snap, bytearray(self.shadow_origin)))

    def _extent(self, data: st.DataObject) -> tuple[int, int]:
        sectors = len(self.shadow_origin) // SECTOR
        first = data.draw(st.integers(0, sectors - 1))
        count = data.draw(st.integers(1, min(96, sectors - first)))
        return first * SECTOR, count * SECTOR

    @rule(data=st.data(), fill=st.integers(0, 255))
    def write_origin(self, data: st.DataObject, fill: int) -> None:
        start, length = self._extent(data)
        payload = bytes([fill]) * length
        self.origin.write(start, payload)
        self.shadow_origin[start : start + length] = payload
        if any(not s.snap.valid for s in self.shadows):
            event("a snapshot was invalidated by origin writes")

    @rule(data=st.data(), fill=st.integers(0, 255))
    def write_snapshot(self, data: st.DataObject, fill: int) -> None:
        if not self.shadows:
            return
        shadow = data.draw(st.sampled_from(self.shadows))
        start, length = self._extent(data)
        for piece in split(start, length, shadow.snap.chunk_bytes):
            payload = bytes([fill]) * piece.length
            try:
                shadow.snap.write(piece.start, payload)
            except SnapshotIOError:
                assert not shadow.snap.valid or shadow.snap.overflowed
                event(f"snapshot write refused ({shadow.snap.status()})")
                return
            shadow.view[piece.start : piece.start + piece.length] = payload

    @rule(data=st.data())
    def merge_with_crash(self, data: st.DataObject) -> None:
        """Merge one snapshot; stop at a random batch boundary, reload, resume: same bytes."""
        candidates = [s for s in self.shadows if s.snap.kind != "N" and s.snap.valid]
        if not candidates:
            return
        target = data.draw(st.sampled_from(candidates))
        index = [s.snap for s in self.shadows if s.snap.kind != "N"].index(target.snap)
        stop = data.draw(st.integers(0, 30))

        ref_origin, ref_snaps = _reload(self.origin.dev, [s.snap for s in self.shadows])  # type: ignore[arg-type]
        assert ref_origin.merge(ref_snaps[index])

        run_origin, run_snaps = _reload(self.origin.dev, [s.snap for s in self.shadows])  # type: ignore[arg-type]
        if not run_origin.merge(run_snaps[index], max_batches=stop):
            event("merge stopped and resumed")
            assert isinstance(run_origin.dev, MemDevice)
            run_origin, run_snaps = _reload(run_origin.dev, run_snaps)
            assert run_origin.merge(run_snaps[index])

        assert run_origin.dev.read(0, run_origin.size) == ref_origin.dev.read(0, ref_origin.size)
        for mine, ref in zip(run_snaps, ref_snaps, strict=True):
            assert mine.cow.read(0, mine.cow.size) == ref.cow.read(0, ref.cow.size)
        # A completed merge leaves the origin equal to the snapshot's view.
        assert run_origin.dev.read(0, run_origin.size) == bytes(target.view)

        survivors = [s for s in self.shadows if s.snap.kind != "N"]
        self.origin = run_origin
        self.shadow_origin = bytearray(target.view)
        self.shadows = [
            Shadow(snap, shadow.view)
            for snap, shadow in zip(run_snaps, survivors, strict=True)
            if shadow is not target
        ]

    @invariant()
    def origin_reads_as_shadow(self) -> None:
        if hasattr(self, "origin"):
            assert self.origin.read(0, self.origin.size) == bytes(self.shadow_origin)

    @invariant()
    def every_valid_snapshot_reads_as_its_view(self) -> None:
        for shadow in self.shadows:
            if shadow.snap.valid:
                assert shadow.snap.read(0, shadow.snap.size) == bytes(shadow.view)

    @invariant()
    def the_store_on_disk_round_trips(self) -> None:
        for shadow in self.shadows:
            store = shadow.snap.store
            if not isinstance(store, PersistentStore):
                continue
            again = PersistentStore.load(shadow.snap.cow, 8)
            assert again.valid == shadow.snap.valid
            if not again.valid:
                continue
            if store.current_area:
                event("store spans several areas")
            assert dict(zip(again.olds, again.news, strict=True)) == shadow.snap.exceptions
            assert again.usage() == store.usage()
            assert (again.current_area, again.current_committed) == (
                store.current_area,
                store.current_committed,
            )


CowMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCowModel = CowMachine.TestCase
