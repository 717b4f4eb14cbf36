"""The merge-sibling cut points (issue 17) as data: every step of dm's merge start and of its
finish beside a sibling, seeded delays in dm's kernel merge and in lvm's lvconvert; opt-in,
dm and lvm only, with a kind of their own, and never moving a point of the default run (its
digests are pinned in test_stacked.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmtests.faults import cli as faults_cli
from vmtests.faults import matrix as faults
from vmtests.faults import report as faults_report
from vmtests.faults.matrix import SIBLING_PHASE, all_cuts, choose

SIB = (SIBLING_PHASE,)


def _sibling_cuts() -> list[faults.Cut]:
    return [c for c in all_cuts() if c.phase == SIBLING_PHASE]


def test_every_step_of_the_merge_and_its_finish_beside_a_sibling_is_a_cut() -> None:
    for fs in faults.FILESYSTEMS:
        dm = [(c.plan, c.step) for c in _sibling_cuts() if c.fs == fs and c.method == "dm"]
        # start: remove the snapshot, load snapshot-merge, suspend, resume (+ after the last)
        assert [s for p, s in dm if p == 1 and s] == list(range(1, 6))
        # finish: snapshot-origin again for the sibling, suspend, resume, loop, COW (+1)
        assert [s for p, s in dm if p == 2] == list(range(1, 7))
        assert sum(1 for p, s in dm if s == 0) == 3  # the kernel's merge
        lvm = [c for c in _sibling_cuts() if c.fs == fs and c.method == "lvm"]
        assert len(lvm) == 4 and all(not c.step and c.marker == "run: lvconvert" for c in lvm)
    assert len(_sibling_cuts()) == 54
    seeded_dm = [c for c in _sibling_cuts() if c.method == "dm" and not c.step]
    assert {c.marker for c in seeded_dm} == {"step 4/4: dmsetup resume"}


def test_the_phase_is_opt_in_with_kinds_of_its_own() -> None:
    assert SIBLING_PHASE not in faults.PHASES and SIBLING_PHASE in faults.ALL_PHASES
    assert {c.phase for c in choose(None)} == set(faults.PHASES)
    kinds = {c.kid for c in _sibling_cuts()}
    assert kinds == {f"{fs}{m}b" for fs in ("e4", "xf", "bt") for m in ("dm", "lv")}
    assert not kinds & {c.kid for c in all_cuts() if c.phase != SIBLING_PHASE}
    assert all(c.spec()["sibling"] and c.spec()["snapped"] for c in _sibling_cuts())
    assert not any(c.spec()["sibling"] for c in choose(None))
    assert len({c.id for c in all_cuts()}) == len(all_cuts())
    assert faults.Cut("ext4", "dm", SIBLING_PHASE, 2, 3).id == "ext4-dm-merge-sibling-p2s3"


def test_choose_takes_every_sibling_point_or_a_spread_sample() -> None:
    every = choose(None, phases=SIB, methods=faults.SIBLING_METHODS)
    assert every == _sibling_cuts()
    sample = choose(6, phases=SIB, methods=faults.SIBLING_METHODS)
    assert len(sample) == 6 and len({c.group for c in sample}) == 6
    both = choose(None, phases=("merge", SIBLING_PHASE), methods=("dm",))
    assert {c.phase for c in both} == {"merge", SIBLING_PHASE}


@pytest.mark.parametrize("methods", [("dm-direct",), ("dm", "dm-direct", "lvm"), ("dm+crypt",)])
def test_the_phase_refuses_a_method_that_cannot_hold_a_sibling(methods: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="snapshot table"):
        choose(None, phases=SIB, methods=methods)


def test_an_unknown_phase_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown phase"):
        choose(None, phases=("merge-siblings",))
    with pytest.raises(ValueError, match="unknown phase"):
        choose(None, phases=())


def test_the_runner_refuses_dm_direct_before_it_boots_anything(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    opts = faults_cli.Options(phases=SIB, methods=("dm-direct",), report=tmp_path / "r")
    assert faults_cli.run_matrix(opts) == 2
    assert "itself a snapshot table" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _result(ok: bool, equal: bool | None, **kw: Any) -> dict[str, Any]:
    r = {"id": "x", "fs": "ext4", "method": "dm", "phase": SIBLING_PHASE, "ok": ok, **kw}
    if equal is not None:
        r["sibling_equal"] = equal
    return r


def test_the_summary_counts_siblings_and_a_missed_sibling_control_fails_the_run() -> None:
    ok = _result(
        True, True, controls={"sibling_changed": True}, acked_checked=3, sibling_acked_checked=64
    )
    f = faults_report.summary([ok], None, 1.0)
    assert f["siblings_checked"] == f["siblings_exact"] == 1 and faults_report.passed(f)
    assert f["sibling_acked_checked"] == 64 and f["sibling_acked_lost"] == 0
    shown = faults_report.table(f)
    assert "sibling snapshots exactly their own point in time: 1/1" in shown
    assert "(acknowledged files in them: 64 checked, 0 lost)" in shown
    assert "merge-sibling" in faults_report.table(f)
    missed = _result(True, True, controls={"sibling_changed": False})
    assert not faults_report.passed(faults_report.summary([missed], None, 1.0))
    lost = _result(False, False, problems=["the sibling lacks 2 files"], sibling_lost=2)
    f = faults_report.summary([lost], None, 1.0)
    assert f["siblings_exact"] == 0 and f["sibling_acked_lost"] == 2
    assert not faults_report.passed(f)
    crashed = _result(False, None)  # a judge that never reached the sibling counts as not
    assert faults_report.summary([crashed], None, 1.0)["siblings_exact"] == 0


def test_a_default_run_s_summary_has_no_sibling_figures() -> None:
    r = {"id": "y", "fs": "ext4", "method": "dm", "phase": "merge", "ok": True}
    f = faults_report.summary([r], None, 1.0)
    assert "siblings_checked" not in f
    assert "sibling" not in faults_report.table(f)
