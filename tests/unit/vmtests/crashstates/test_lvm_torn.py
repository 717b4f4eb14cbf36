"""LVM's own torn metadata is excused in a reordered state only (RELIABILITY.md, crash states:
LVM writes its metadata text and the header pointing at it with no flush between)."""

from __future__ import annotations

from typing import Any

from vmtests.crashstates import report
from vmtests.guest.crashstates.judge import excuse_lvm_torn
from vmtests.guest.crashstates.plan import CrashState

FAILED = "judge: CommandError: mount -t ext4 /dev/vge4lv/lv0 /m/e4lv exited 2"


def _out(torn: bool) -> dict[str, Any]:
    return {"problems": [FAILED], "lvm_metadata_torn": torn}


def test_a_reordered_state_with_torn_lvm_metadata_is_excused_and_counted() -> None:
    out = _out(True)
    excuse_lvm_torn(CrashState(cut=4677, upto=4672, method="reorder", extra=(4676,)), out)
    assert out["problems"] == [] and out["excused"] == [FAILED]


def test_torn_lvm_metadata_at_a_durable_point_fails() -> None:
    out = _out(True)
    excuse_lvm_torn(CrashState(cut=4679, upto=4679, method="flush"), out)
    assert "LVM metadata torn at a durable point" in out["problems"] and "excused" not in out


def test_a_failure_without_torn_metadata_is_never_excused() -> None:
    """The negative control: the excuse must not swallow an ordinary failure."""
    out = _out(False)
    excuse_lvm_torn(CrashState(cut=4677, upto=4672, method="reorder", extra=(4676,)), out)
    assert out["problems"] == [FAILED] and "excused" not in out


def test_the_summary_counts_excused_states_and_the_table_says_why() -> None:
    state = {"ok": True, "operation": "merge-start", "replayed": "reorder", "excused": [FAILED]}
    kind = {"kid": "e4lv", "fs": "ext4", "method": "lvm", "states": [state]}
    f = report.summary([kind], 1.0, "R")
    assert f["lvm_metadata_torn"] == 1
    assert "excused: 1 reordered state(s) whose LVM metadata tore" in report.table(f)
