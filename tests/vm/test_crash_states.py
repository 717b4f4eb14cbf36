"""Crash states (issue 17), the CI slice of ``vmtest run --matrix crash-states``: ext4 on dm,
a seeded few dozen states of one recorded lifecycle (create, merge start, the kernel's merge,
merge finish, a second create, discard), judged in the same guest that recorded it.

The contract is the command's: results.json's summary and one entry per state; the three
negative controls (a writer that skips its fsync, snapkit's state file renamed in without its
fsync, a replay that drops the COW's metadata commits) must each be caught.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vmtests.crashstates.cli import Options, run_matrix

STATES, SEED = 30, 17


@pytest.mark.vm
def test_a_seeded_slice_of_crash_states_holds(vm_accel: Any, vm_artifacts: Path) -> None:
    report = vm_artifacts / "crash-states"
    code = run_matrix(
        Options(
            states=STATES,
            seed=SEED,
            workers=1,
            report=report,
            accel=str(vm_accel),
            filesystems=("ext4",),
            methods=("dm",),
        )
    )
    doc = json.loads((report / "results.json").read_text())
    f = doc["summary"]
    assert code == 0, (f["errors"], f["failures"], f["replay"])
    assert STATES * 2 // 3 <= f["states"] == f["states_ok"] == len(doc["states"])
    assert f["acked_checked"] > 0 and f["acked_lost"] == 0
    assert f["suspended_left"] == 0 and f["frozen_left"] == 0
    assert set(f["controls"]) == {"skip-flush", "state-no-fsync", "cow-fua-drop"}
    assert all(c["tried"] and c["caught"] for c in f["controls"].values()), f["controls"]
    for s in doc["states"]:
        assert {"fs", "method", "operation", "ok"} <= set(s)
    assert {"create", "merge-start", "discard"} <= set(f["by_operation"])
