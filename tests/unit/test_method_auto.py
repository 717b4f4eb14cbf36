"""``auto`` against the fakes of the lvm and dm tests: it picks lvm-thin, lvm, btrfs or dm by
the methods' own ``unsuitable()``, names the choice and the reason in the plan it prints, falls
back to freeze only with a command, and otherwise refuses with every method's reason and a hint.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from snapkit.dm.fake import FakeDm, Faults
from snapkit.errors import RefusedError
from snapkit.methods.auto import AutoMethod
from snapkit.methods.base import Host
from snapkit.methods.btrfs import snapshot as btrfs
from snapkit.model import CreateRequest, SnapshotRecord, State, Target
from snapkit.plan import PlanError, apply
from tests.unit.fakes import LV_TARGET, FakeLvm, lvm_world, make_world


def lvm_host(fake: FakeLvm) -> Any:
    return SimpleNamespace(run=fake, dm=FakeDm(faults=Faults()), loops=None, files=None)


def no_lvm() -> FakeLvm:
    return FakeLvm(Faults())  # lvs reports no LV at all


def chosen(host: Any, target: Target, command: bool = False) -> tuple[str, str]:
    method, why = AutoMethod(host).choose(target, command=command)
    return method.name, why


def test_an_lv_gets_lvm() -> None:
    assert chosen(lvm_host(lvm_world()), LV_TARGET) == ("lvm", "it is an LVM logical volume")


def test_a_thin_lv_gets_lvm_thin() -> None:
    assert chosen(lvm_host(lvm_world(thin=True)), LV_TARGET) == ("lvm-thin", "it is a thin LV")


def test_a_btrfs_subvolume_gets_btrfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(btrfs, "SUBVOL_ROOT_INODE", tmp_path.stat().st_ino)
    target = Target(Path("/dev/vdb"), tmp_path, "btrfs", (254, 16))
    assert chosen(lvm_host(no_lvm()), target) == ("btrfs", "it is a btrfs subvolume")


def test_a_prepared_dm_linear_device_gets_dm(tmp_path: Path) -> None:
    dm_world = make_world(tmp_path)
    host = Host(dm=dm_world.dm, run=no_lvm(), loops=dm_world.loops, files=dm_world.files)
    mounted = Target(Path("/dev/mapper/data"), Path("/mnt/o"), "ext4", (253, 0))
    assert chosen(host, mounted) == ("dm", "it is a dm linear device prepared by snapkit")


PLAIN = Target(Path("/dev/vdb"), Path("/mnt/o"), "ext4", (254, 16))


def test_anything_else_is_refused_with_every_reason_and_a_hint() -> None:
    with pytest.raises(RefusedError) as caught:
        chosen(lvm_host(no_lvm()), PLAIN)
    message = caught.value.message
    for name in ("lvm-thin:", "lvm:", "btrfs:", "dm:"):
        assert name in message, message
    assert "not an active logical volume" in message and "not btrfs" in message
    assert "is not a device-mapper device" in message
    hint = caught.value.hint or ""
    assert "snapkit device prepare" in hint and "'--'" in hint
    assert AutoMethod(lvm_host(no_lvm())).unsuitable(PLAIN) is None  # a command would fit


def test_with_a_command_anything_freezable_gets_freeze() -> None:
    name, why = chosen(lvm_host(no_lvm()), PLAIN, command=True)
    assert name == "freeze" and "freezing around the given command" in why
    unmounted = Target(Path("/dev/vdb"), None, None, (254, 16))
    with pytest.raises(RefusedError):
        chosen(lvm_host(no_lvm()), unmounted, command=True)
    assert "no method fits /dev/vdb" in (AutoMethod(lvm_host(no_lvm())).unsuitable(unmounted) or "")


def test_the_plan_prints_the_choice_and_the_reason() -> None:
    fake = lvm_world()
    plan, record = AutoMethod(lvm_host(fake)).plan_create(CreateRequest(LV_TARGET, "s1"))
    assert "[auto: lvm, because it is an LVM logical volume]" in plan.render()
    assert record.method == "lvm"  # status, merge and discard go straight to lvm
    apply(plan)
    auto = AutoMethod(lvm_host(fake))
    assert auto.status(record).state is State.ACTIVE
    apply(auto.plan_discard(record))
    assert "s1" not in fake.lvs


@pytest.mark.parametrize(("thin", "at"), [(False, 0), (True, 0), (True, 1)])
def test_a_failure_at_every_step_of_the_chosen_plan_leaves_lvm_as_it_was(
    thin: bool, at: int
) -> None:
    fake = lvm_world(thin, fail_at=None)
    auto = AutoMethod(lvm_host(fake))
    plan, _ = auto.plan_create(CreateRequest(LV_TARGET, "s1"))  # lvs runs before the fault
    before = fake.state()
    fake.faults.fail_at = len(fake.faults.calls) + at
    with pytest.raises(PlanError):
        apply(plan)
    assert fake.state() == before


def test_a_record_naming_auto_is_refused() -> None:
    record = SnapshotRecord("s1", "auto", "/dev/vdb", "", 0.0)
    with pytest.raises(RefusedError, match="names no real method"):
        AutoMethod(lvm_host(no_lvm())).status(record)
