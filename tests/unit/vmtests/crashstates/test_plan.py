"""Which crash states are judged (no VM): durable points, reordered states that are legal and
never a prefix, labels from the recorder's marks, and the figures' own negative controls."""

from __future__ import annotations

from typing import Any

import pytest

from vmtests.crashstates import report
from vmtests.guest.crashstates import plan
from vmtests.guest.crashstates.logwrites import FLUSH, FUA, MARK, Entry


def log_of(kinds: str) -> list[Entry]:
    """``w`` write, ``F`` flush, ``U`` FUA write, ``m:TEXT`` a mark; space separated."""
    out = []
    for i, tok in enumerate(kinds.split(), 1):
        if tok.startswith("m:"):
            out.append(Entry(i, 0, 0, MARK, 0, tok[2:]))
        else:
            flags = {"w": 0, "F": FLUSH, "U": FUA}[tok]
            out.append(Entry(i, i, 0 if tok == "F" else 1, flags, 1 if tok != "F" else 0))
    return out


LOG = log_of("w F m:base w w m:op.start w F w w w F U F m:ack:w2:1 F m:op.done w w F m:end")


def test_durable_points_skip_a_flush_that_changes_nothing() -> None:
    lo, hi = plan.window(LOG, "base", "end")
    cuts = [s.cut for s in plan.durable_points(LOG, lo, hi)]
    assert cuts == [8, 12, 13, 16, 20]  # not 14: nothing since 13; 16: a mark since 14
    assert [s.method for s in plan.durable_points(LOG, lo, hi)][2] == "fua"


def test_a_reordered_state_is_legal_and_never_a_prefix() -> None:
    lo, hi = plan.window(LOG, "base", "end")
    eps = plan.epochs(LOG, lo, hi)
    assert [(o, [w.index for w in ws]) for o, ws in eps] == [(8, [9, 10, 11]), (16, [18, 19])]
    for seed in range(50):
        st = plan.reordered(*eps[0], seed)
        assert st.upto == 8 and st.method == "reorder" and st.cut in (10, 11)
        assert set(st.extra) < set(range(9, st.cut + 1))  # a strict subset: not the prefix
        assert all(9 <= i <= st.cut for i in st.extra)


def test_situation_reads_the_marks_up_to_the_cut() -> None:
    marks = plan.marks_of(LOG)
    assert plan.situation(marks, 7).operation == "op" and not plan.situation(marks, 7).acked
    s = plan.situation(marks, 16)
    assert s.acks == {"w2": 1} and not s.acked
    assert plan.situation(marks, 18).acked and plan.situation(marks, 18).did("op.done")
    assert plan.situation(marks, 2).operation == "setup"


def test_operation_at_names_the_operation_situation_names_for_every_cut() -> None:
    log = log_of(
        "w m:base w m:a.start w m:ack:w2:1 F m:a.done w m:ack:w3:2 m:kernel-merge.start w "
        "m:kernel-merge.done m:b.start m:b.start F m:b.done m:end w"
    )
    marks = plan.marks_of(log)
    operation = plan.operation_at(marks)
    for cut in range(0, len(log) + 2):
        assert operation(cut) == plan.situation(marks, cut).operation, cut
    assert plan.operation_at([])(5) == "setup"


def test_choose_is_seeded_sorted_and_within_budget() -> None:
    a = plan.choose(LOG, 5, seed=3)
    assert a == plan.choose(LOG, 5, seed=3)
    assert len(a) <= 5 and [s.upto for s in a] == sorted(s.upto for s in a)
    assert {s.method for s in a} >= {"flush", "reorder"}
    with pytest.raises(ValueError, match="no mark 'nope'"):
        plan.choose(LOG, 5, seed=3, first="nope")


def _state(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cut": 10,
        "replayed": "flush",
        "seed": 0,
        "operation": "create",
        "ok": True,
        "problems": [],
        "controls": {},
        "acked_checked": 5,
        "acked_lost": 0,
        "suspended": [],
        "frozen": [],
    }
    return {**base, **kw}


def _kinds(states: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ctl = [
        _state(controls={"skip-flush": True, "state-no-fsync": True}),
        _state(control="cow-fua-drop", ok=False, problems=["not whole"]),
    ]
    return [{"kid": "e4dm", "fs": "ext4", "method": "dm", "states": states + ctl}]


def test_the_figures_pass_a_clean_run() -> None:
    f = report.summary(_kinds([_state()]), 1.0, "r")
    assert report.passed(f), f
    assert f["states"] == 3 - 1 and f["controls"]["cow-fua-drop"] == {"tried": 1, "caught": 1}


@pytest.mark.parametrize(
    "planted",
    [
        {"ok": False, "acked_lost": 1, "problems": ["1 acknowledged writes lost"]},
        {"ok": False, "suspended": ["dm-3"], "problems": ["suspended"]},
        {"ok": False, "frozen": ["/m/x"], "problems": ["frozen"]},
        {"controls": {"skip-flush": False}},
    ],
)
def test_the_figures_catch_each_planted_fault(planted: dict[str, Any]) -> None:
    kinds = _kinds([_state(**planted)])
    if "controls" in planted:  # a control never caught anywhere
        kinds[0]["states"] = [s for s in kinds[0]["states"] if "skip-flush" not in s["controls"]]
        kinds[0]["states"].append(_state(**planted))
    f = report.summary(kinds, 1.0, "r")
    assert not report.passed(f)
    if not planted.get("ok", True):
        assert (
            f["replay"]
            and "--cut 10" in f["replay"][0]
            and "--replay r/logs/e4dm" in f["replay"][0]
        )


def test_a_cut_before_the_first_plain_write_moves_on_to_it() -> None:
    """An epoch that opens with FUA writes: a cut among those left no plain write to leave
    out and crashed on ``randrange(0)``; it now moves on to the first plain write, whose
    omission makes the state (and every other seed draws what it drew before)."""
    log = log_of("F U U w w F")
    ((opened, writes),) = plan.epochs(log, 0, 6)
    cuts = set()
    for seed in range(40):
        st = plan.reordered(opened, writes, seed)
        cuts.add(st.cut)
        assert {2, 3} <= set(st.extra) and st.cut >= 4  # every FUA write up to the cut landed
        assert set(st.extra) < set(range(2, st.cut + 1))  # never the prefix
    assert cuts == {4, 5}


def test_an_epoch_without_a_plain_write_has_no_reordered_state() -> None:
    """The guard's negative control: all FUA (or a single write) is refused in words, never
    an empty draw; :func:`plan.epochs` never offers such an epoch to :func:`plan.choose`."""
    log = log_of("F U U U F")
    writes = [e for e in log if e.is_write]
    with pytest.raises(ValueError, match="no reordered state"):
        plan.reordered(1, writes, 1)
    with pytest.raises(ValueError, match="no reordered state"):
        plan.reordered(1, writes[:1], 1)
    assert plan.epochs(log, 0, 5) == []


@pytest.mark.parametrize(("method", "passes"), [("lvm-thin", True), ("lvm", True), ("dm", False)])
def test_cow_fua_drop_is_required_only_where_a_cow_file_is(method: str, passes: bool) -> None:
    """A run of lvm or lvm-thin kinds only has no COW file whose commits it could drop: it
    passes without that control. The negative control: a dm kind that never tried it fails."""
    kinds = _kinds([_state()])
    kinds[0].update(method=method)
    kinds[0]["states"] = [s for s in kinds[0]["states"] if s.get("control") != "cow-fua-drop"]
    f = report.summary(kinds, 1.0, "r")
    assert f["controls"]["cow-fua-drop"] == {"tried": 0, "caught": 0}
    assert report.passed(f) is passes
