"""Disks found again after a reboot by what does not move (serial, loop backing file), not
by the major:minor that probe order hands out; recover refuses a disk it cannot find."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import snapkit.host.target
from snapkit.dm.table import DevNum, Linear, Table
from snapkit.errors import RefusedError
from snapkit.host.target import StableId, find_stable, stable_id
from snapkit.methods.dm.shared import DmDetails
from snapkit.plan import apply
from snapkit.state import Prepared, StateData, parse, render
from tests.unit.test_recover import _created, _rebooted, plan_recover


def fake_sysfs(root: Path, disks: dict[str, tuple[str, str]]) -> Path:
    """``{"MAJ:MIN": (kname, serial or "loop:FILE")}``; ``vdaN`` names a partition of vda."""
    by_dev = root / "dev" / "block"
    by_dev.mkdir(parents=True, exist_ok=True)
    for devnum, (kname, what) in disks.items():
        parent = root / "devices"
        if kname[-1].isdigit() and kname.startswith("vd"):
            parent = parent / kname[:-1]
        node = parent / kname
        node.mkdir(parents=True, exist_ok=True)
        if what.startswith("loop:"):
            (node / "loop").mkdir(exist_ok=True)
            (node / "loop" / "backing_file").write_text(what[5:] + "\n")
        elif kname[-1].isdigit() and kname.startswith("vd"):
            (node / "partition").write_text(kname[-1] + "\n")
        else:
            (node / "serial").write_text(what + "\n")
        (by_dev / devnum).symlink_to(node)
    return by_dev


def test_serial_partition_and_loop_identities(tmp_path: Path) -> None:
    sys_block = fake_sysfs(
        tmp_path,
        {"254:0": ("vda", "disk0"), "254:1": ("vda1", ""), "7:0": ("loop0", "loop:/var/img")},
    )
    assert stable_id(DevNum(254, 0), sys_block=sys_block) == StableId("serial", "disk0")
    part = stable_id(DevNum(254, 1), sys_block=sys_block)
    assert part == StableId("serial", "disk0", 1) and str(part) == "serial:disk0#1"
    assert StableId.parse(str(part)) == part
    assert stable_id(DevNum(7, 0), sys_block=sys_block) == StableId("loop", "/var/img")
    assert stable_id(DevNum(9, 9), sys_block=sys_block) is None


def test_a_disk_is_found_under_its_new_number(tmp_path: Path) -> None:
    before = fake_sysfs(tmp_path / "a", {"254:0": ("vda", "disk0"), "254:16": ("vdb", "disk1")})
    ident = stable_id(DevNum(254, 16), sys_block=before)
    assert ident is not None
    after = fake_sysfs(tmp_path / "b", {"254:0": ("vda", "disk1"), "254:16": ("vdb", "disk0")})
    assert find_stable(ident, sys_block=after) == DevNum(254, 0)
    gone = fake_sysfs(tmp_path / "c", {"254:0": ("vda", "disk0")})
    assert find_stable(ident, sys_block=gone) is None


def test_the_state_file_keeps_a_prepared_devices_identity() -> None:
    data = StateData(devices=(Prepared("data", "/dev/vdb", StableId("serial", "disk1")),))
    assert parse(render(data)) == data
    assert parse(render(StateData(devices=(Prepared("d", "/dev/vdb"),)))).devices[0].ident is None


def _recorded_on(tmp_path: Path, serial: str) -> tuple[object, StateData]:
    world, data = _created(tmp_path)
    record = data.snapshots[0]
    d = DmDetails.of(record)
    marked = replace(d, table_id=StableId("serial", serial))
    record = replace(record, details={**record.details, **marked.to_strings()})
    return world, StateData(snapshots=(record,))


def test_recover_maps_the_disk_where_it_is_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world, data = _recorded_on(tmp_path, "disk1")
    # after the reboot, 7:0 is another disk; disk1 came up as 7:9
    sys_block = fake_sysfs(tmp_path / "sys", {"7:0": ("vdx", "other"), "7:9": ("vdy", "disk1")})
    monkeypatch.setattr(snapkit.host.target, "SYS_BLOCK", sys_block)
    flow = _rebooted(world)  # type: ignore[arg-type]
    flow.host.dm.add_block_device("/dev/vdy", DevNum(7, 9))  # type: ignore[attr-defined]
    plan, _, kept = plan_recover(flow, data)
    apply(plan)
    moved = Table.single(2048, Linear(DevNum(7, 9), 0))
    assert flow.host.dm.table("data-real") == moved
    assert DmDetails.of(kept.snapshots[0]).table == moved


def test_recover_refuses_a_disk_it_cannot_find(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world, data = _recorded_on(tmp_path, "disk1")
    sys_block = fake_sysfs(tmp_path / "sys", {"7:0": ("vdx", "other")})
    monkeypatch.setattr(snapkit.host.target, "SYS_BLOCK", sys_block)
    flow = _rebooted(world)  # type: ignore[arg-type]
    with pytest.raises(RefusedError, match=r"serial:disk1\) is not attached"):
        plan_recover(flow, data)
    assert flow.host.dm.list_devices() == {}
