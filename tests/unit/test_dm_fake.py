"""FakeDm follows the kernel rules that plans depend on."""

from __future__ import annotations

import errno

import pytest

from snapkit.dm.control import DmError
from snapkit.dm.fake import FakeDm, Faults
from snapkit.dm.status import NoStatus, SnapshotUsage
from snapkit.dm.table import DevNum, Linear, Snapshot, SnapshotOrigin, Store, Table

LOOP0, LOOP1 = DevNum(7, 0), DevNum(7, 1)


@pytest.fixture
def dm() -> FakeDm:
    fake = FakeDm()
    fake.add_block_device("/dev/loop0", LOOP0)
    fake.add_block_device("/dev/loop1", LOOP1)
    return fake


def errno_of(call: object) -> int:
    with pytest.raises(DmError) as info:
        call()  # type: ignore[operator]
    return info.value.errno


def test_names_and_uuids_are_unique(dm: FakeDm) -> None:
    dm.create("a", uuid="U")
    assert errno_of(lambda: dm.create("a")) == errno.EBUSY
    assert errno_of(lambda: dm.create("b", uuid="U")) == errno.EBUSY


def test_tables_hold_devices_open(dm: FakeDm) -> None:
    real = dm.create("o-real").dev
    dm.load("o-real", Table.single(8, Linear(LOOP0, 0)))
    dm.resume("o-real")
    dm.create("s")
    dm.load("s", Table.single(8, Snapshot(real, "/dev/loop1", Store.PERSISTENT, 8)))
    assert dm.state()["o-real"].open_count == 1  # an inactive table holds it too
    assert errno_of(lambda: dm.remove("o-real")) == errno.EBUSY
    dm.clear("s")
    dm.remove("o-real")


def test_loads_need_existing_devices(dm: FakeDm) -> None:
    dm.create("a")
    assert errno_of(lambda: dm.load("a", Table.single(8, Linear(DevNum(8, 0), 0)))) == errno.EINVAL
    assert errno_of(lambda: dm.load("a", Table.single(8, Linear("/dev/nope", 0)))) == errno.EINVAL
    dm.create("b")
    dm.load("b", Table.single(8, SnapshotOrigin("/dev/mapper/a")))
    assert dm.state()["a"].open_count == 1


def test_resume_swaps_and_needs_a_table(dm: FakeDm) -> None:
    dm.create("a")
    dm.suspend("a")
    assert errno_of(lambda: dm.resume("a")) == errno.EINVAL
    table = Table.single(8, Linear(LOOP0, 0))
    dm.load("a", table)
    info = dm.resume("a")
    assert not info.suspended and info.active_table and not info.inactive_table
    assert dm.table("a") == table and dm.table("a", inactive=True) is None
    assert dm.status("a")[0].status == NoStatus()


def test_missing_devices(dm: FakeDm) -> None:
    assert dm.info("x") is None
    for call in (lambda: dm.remove("x"), lambda: dm.suspend("x"), lambda: dm.table("x")):
        assert errno_of(call) == errno.ENXIO


def test_default_snapshot_status_is_a_fresh_store(dm: FakeDm) -> None:
    dm.create("s")
    dm.load("s", Table.single(4096, Snapshot(LOOP0, LOOP1, Store.PERSISTENT, 8)))
    dm.resume("s")
    assert dm.status("s")[0].status == SnapshotUsage(16, 4096, 16)


def test_faults_fail_the_numbered_call_once() -> None:
    faults = Faults(fail_at=1)
    dm = FakeDm(faults=faults)
    dm.create("a")
    assert errno_of(lambda: dm.create("b")) == errno.EIO
    dm.create("b")
    assert faults.calls == ["dm create a", "dm create b", "dm create b"]
    assert set(dm.list_devices()) == {"a", "b"}
