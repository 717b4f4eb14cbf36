"""The power-cut matrix as data, and the host-side judges of a run (no VM).

The summary and the exit status are checkers too: each is fed a planted fault (a lost write,
a suspended device, a frozen filesystem, a missed negative control, a bad input not refused
cleanly, a cut that never reached its point) and must report it.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from vmtests.faults import matrix as faults
from vmtests.faults import report as faults_report
from vmtests.faults.matrix import Cut, all_cuts, chains, choose
from vmtests.faults.run import Armed, Runner


def test_every_point_has_a_unique_id_and_a_kind_that_fits_a_serial() -> None:
    cuts = all_cuts()
    assert len({c.id for c in cuts}) == len(cuts)
    for c in cuts:
        assert len(f"{c.kid}-o") <= 20 and c.kid.isalnum()
        assert c.step or c.delay_ms >= 0


def test_the_matrix_covers_every_phase_filesystem_and_method() -> None:
    groups = {c.group for c in all_cuts()}
    for phase in faults.PHASES:
        for fs in faults.FILESYSTEMS:
            assert f"{phase}/{fs}/dm" in groups and f"{phase}/{fs}/lvm" in groups
            if phase != "extend":  # dm-direct's COW is the origin's own table: no watch
                assert f"{phase}/{fs}/dm-direct" in groups


def test_btrfs_dm_create_pauses_at_its_freeze_steps_too() -> None:
    steps = {c.step for c in all_cuts() if c.group == "create/btrfs/dm" and c.step}
    assert max(steps) == 14 + faults.BTRFS_FREEZE_STEPS + 1  # + the pause after the last step


def test_a_full_run_puts_60_points_on_create_and_merge() -> None:
    picked = choose(72)
    assert len(picked) == 72
    assert sum(c.phase in faults.MAIN_PHASES for c in picked) >= 60
    assert {c.phase for c in picked} == set(faults.PHASES)
    assert {c.fs for c in picked} == set(faults.FILESYSTEMS)
    assert {c.method for c in picked} == set(faults.METHODS)


def test_choose_is_seeded_and_spreads_a_small_sample() -> None:
    assert choose(6, seed=3) == choose(6, seed=3)
    assert choose(6, seed=3) != choose(6, seed=4)
    assert len({c.group for c in choose(10)}) == 10  # ten points, ten groups
    assert choose(None) == [
        c for c in all_cuts() if c.method in faults.METHODS and c.phase in faults.PHASES
    ]


def test_choose_replays_ids_and_refuses_unknown_ones() -> None:
    one = all_cuts()[5]
    assert choose(None, ids=(one.id,)) == [one]
    with pytest.raises(ValueError, match="unknown cut point"):
        choose(None, ids=("ext4-dm-create-p9s99",))


def test_chains_never_put_two_cuts_of_one_kind_side_by_side_when_avoidable() -> None:
    picked = choose(40)
    out = chains(picked, 4)
    assert sorted(c.id for ch in out for c in ch) == sorted(c.id for c in picked)
    for ch in out:
        kinds = Counter(c.kid for c in ch)
        if max(kinds.values()) <= (len(ch) + 1) // 2:
            assert all(a.kid != b.kid for a, b in itertools.pairwise(ch)), ch


def test_seeded_cuts_wait_for_their_command() -> None:
    assert Cut("ext4", "lvm", "create", delay_ms=5).marker == "run: lvcreate"
    assert Cut("ext4", "dm", "create", delay_ms=5).marker == faults.OP_EXITED
    assert Cut("ext4", "dm", "merge", delay_ms=5).marker.endswith("dmsetup resume")
    assert Cut("ext4", "dm", "create", 1, 3).marker == ""


def _cut(ok: bool = True, **over: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "id": "x",
        "fs": "ext4",
        "method": "dm",
        "phase": "create",
        "ok": ok,
        "problems": [] if ok else ["boom"],
        "acked_checked": 10,
        "acked_lost": 0,
        "suspended": [],
        "frozen": [],
        "snapshot": "active",
        "seconds": 10.0,
    }
    r.update(over)
    return r


BAD = {"tried": 60, "refused_cleanly": 60, "controls": 2, "controls_caught": 2}


def test_summary_of_a_clean_run_passes() -> None:
    f = faults_report.summary([_cut()], BAD, 100.0)
    assert faults_report.passed(f)
    assert f["per_phase_fs_method"] == {"create/ext4/dm": {"cuts": 1, "ok": 1}}
    assert "1/1" in faults_report.table(f)


@pytest.mark.parametrize(
    ("planted", "bad"),
    [
        ({"acked_lost": 1}, BAD),
        ({"suspended": ["dm-3"]}, BAD),
        ({"frozen": ["/m/x"]}, BAD),
        ({"controls": {"fsck": False}}, BAD),
        ({"ok": False, "problems": ["fsck of the origin"]}, BAD),
        ({}, {**BAD, "refused_cleanly": 59}),
        ({}, {**BAD, "controls_caught": 1}),
        ({}, {"tried": 0, "refused_cleanly": 0, "error": "LostVMError: the VM was lost"}),
    ],
    ids=[
        "lost",
        "suspended",
        "frozen",
        "control",
        "cut",
        "bad-input",
        "bad-control",
        "bad-input-boot-lost",
    ],
)
def test_summary_catches_each_planted_fault(planted: dict[str, Any], bad: dict[str, Any]) -> None:
    f = faults_report.summary([_cut(**planted)], bad, 100.0)
    assert not faults_report.passed(f)


def test_acceptance_says_which_bar_a_run_missed() -> None:
    f = faults_report.summary([_cut()] * 3, {**BAD, "tried": 10, "refused_cleanly": 10}, 2000.0)
    missed = [k for k, v in f["acceptance"].items() if not v]
    assert missed == [
        "create+merge cuts >= 60",
        "bad inputs >= 30, all refused cleanly",
        "run time <= 15 min",
    ]
    assert "MISSED run time" in faults_report.table(f)


def test_a_cut_that_never_reached_its_point_or_missed_a_control_fails(tmp_path: Path) -> None:
    runner = Runner(image=None, accel=None, report=tmp_path, seed=6)
    cut = Cut("ext4", "dm", "create", 1, 3)
    judged = {"ok": True, "problems": [], "seconds": 1.0, "controls": {"frozen": True}}
    folder = tmp_path / "c"
    folder.mkdir()
    good = runner._result(Armed(cut, {}, folder, [], True, 5.0), dict(judged), 2.0, tmp_path)
    assert good["ok"] and good["seconds"] == 7.0 and "replay" not in good
    unpaused = runner._result(Armed(cut, {}, folder, [], False, 5.0), dict(judged), 2.0, tmp_path)
    assert not unpaused["ok"] and "never reached" in unpaused["problems"][0]
    assert unpaused["replay"].endswith(f"--scenario {cut.id} -n 1 --report report-{cut.id}")
    missed = {**judged, "controls": {"frozen": False}}
    failed = runner._result(Armed(cut, {}, folder, [], True, 5.0), missed, 2.0, tmp_path)
    assert not failed["ok"] and "not caught: frozen" in failed["problems"][0]


def test_the_judge_allows_only_active_or_cleanly_absent_and_never_a_lost_extension() -> None:
    from vmtests.guest.faults.copy import count_lost
    from vmtests.guest.faults.judge import state_problem

    assert state_problem("create", "absent") == state_problem("merge", "active") == ""
    assert state_problem("extend", "absent")  # an extension must never lose the snapshot
    assert state_problem("merge", "merging") and state_problem("discard", "invalid")
    assert state_problem("merge-sibling", "absent") == ""  # the merged one; not its sibling
    assert state_problem("merge-sibling", "merging")
    assert count_lost("/nonexistent", 3) == 3 and count_lost("/nonexistent", 0) == 0


def test_count_lost_sees_a_missing_or_changed_acknowledged_file(tmp_path: Path) -> None:
    from vmtests.guest.faults.copy import count_lost
    from vmtests.guest.writer import pattern

    for n in (1, 2, 3):
        (tmp_path / f"f{n}").write_bytes(pattern(n))
    assert count_lost(str(tmp_path), 3) == 0
    (tmp_path / "f2").write_bytes(pattern(2)[:-1])  # torn
    (tmp_path / "f3").unlink()
    assert count_lost(str(tmp_path), 3) == 2


def test_the_markdown_summary_carries_the_grid_and_every_figure() -> None:
    f = faults_report.summary([_cut(), _cut(ok=False, phase="merge")], BAD, 100.0)
    md = faults_report.markdown(f, "vmtest run --matrix faults")
    assert "| create | 1/1 | 1/1 |" in md and "| merge | 0/1 | 0/1 |" in md
    assert "- acknowledged writes: 20 checked, 0 lost" in md
    assert "MISSED every cut held" in md
