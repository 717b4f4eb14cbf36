"""Crash states of snapshot groups: opt-in kinds that leave the default run as it was, a group
kind's slices and names, the planted ``group-split`` bug, and the controls a group-only run
must catch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmtests.crashstates import report, run
from vmtests.guest.crashstates import group, main
from vmtests.guest.crashstates.layout import DISK_MIB, MIB, Kind


def test_group_kinds_are_opt_in_and_ext4_xfs_only() -> None:
    default = run.kinds(run.FILESYSTEMS, run.METHODS)
    assert len(default) == 9 and not any(k.method.startswith("group-") for k in default)
    picked = run.kinds(run.FILESYSTEMS, run.GROUP_METHODS)
    assert {(k.fs, k.method) for k in picked} == {
        (fs, m) for fs in ("ext4", "xfs") for m in run.GROUP_METHODS
    }
    kids = [k.kid for k in run.kinds(run.FILESYSTEMS, run.METHODS + run.GROUP_METHODS)]
    assert len(set(kids)) == len(kids) and all("-" not in kid for kid in kids)


def test_a_group_kind_fits_its_disk_and_names_its_members() -> None:
    k, record, _, check = main.parts({"kid": "e4gx", "fs": "ext4", "method": "group-dm-direct"})
    assert isinstance(k, group.GroupKind) and record is group.record and check is group.check
    assert k.member_method == "dm-direct" and len(k.loop_slices()) == 2
    end = max(start + size for _, start, size in k.slices())
    assert end * 512 <= DISK_MIB * MIB
    assert k.members_of(k.groups[0]) == ["ge4gx-a", "ge4gx-b"]  # GROUP-SUFFIX, by mount point
    assert [k.member_mnt(m).rsplit("/", 1)[1] for m in group.MEMBERS] == ["a", "b"]
    lvm = main.parts({"kid": "e4gl", "fs": "ext4", "method": "group-lvm"})[0]
    assert (
        isinstance(lvm, group.GroupKind) and lvm.member_method == "lvm" and lvm.loop_slices() == ()
    )
    plain = main.parts({"kid": "e4dm", "fs": "ext4", "method": "dm"})
    assert type(plain[0]) is Kind and plain[3] is None


def test_the_planted_split_drops_one_member_of_the_first_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    k = group.GroupKind("e4gd", "ext4", "group-dm")
    monkeypatch.setattr(group.GroupKind, "state", property(lambda _self: str(tmp_path)))
    doc = {
        "snapshots": [{"name": "ge4gd-a"}, {"name": "ge4gd-b"}],
        "groups": [{"name": "ge4gd", "members": ["ge4gd-a", "ge4gd-b"]}],
    }
    (tmp_path / "state.json").write_text(json.dumps(doc))
    group.drop_member(k)
    after = json.loads((tmp_path / "state.json").read_text())
    assert [s["name"] for s in after["snapshots"]] == ["ge4gd-a"]
    assert after["groups"][0]["members"] == ["ge4gd-a"]


def _kind(method: str, states: list[dict[str, object]]) -> dict[str, object]:
    return {"kid": "k", "fs": "ext4", "method": method, "states": states}


def test_a_group_only_run_must_catch_the_group_controls_and_no_others() -> None:
    ok = {"ok": True, "operation": "create", "replayed": "flush", "cut": 1, "problems": []}
    caught = {**ok, "controls": {"skip-flush": True}}
    split = {**ok, "ok": False, "control": "group-split", "problems": ["group g is split"]}
    figures = report.summary([_kind("group-dm", [caught, split])], 1.0, "R")
    assert set(figures["controls"]) == {"skip-flush", "group-split"}
    assert report.passed(figures)
    missed = report.summary([_kind("group-dm", [caught, {**split, "ok": True}])], 1.0, "R")
    assert not report.passed(missed)
    default = report.summary([_kind("dm", [ok])], 1.0, "R")
    assert set(default["controls"]) == set(report.CONTROLS)
