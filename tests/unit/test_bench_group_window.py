"""The group-window benchmark's figures: each case against the same method's single snapshot
from the same run (medians of the rounds)."""

from __future__ import annotations

from snapkit.bench.group_window import Case, as_dict


def test_each_case_is_compared_with_its_own_methods_single_snapshot() -> None:
    cases = [
        Case("dm", 1, (40.0, 50.0, 60.0), (1.0, 1.0, 1.0)),
        Case("dm", 4, (70.0, 80.0, 90.0), (2.0, 2.0, 2.0)),
        Case("lvm", 1, (100.0,), (3.0,)),
        Case("lvm", 2, (300.0,), (5.0,)),
    ]
    data = as_dict(cases)
    ratios = {(c["method"], c["members"]): c["ratio_to_single"] for c in data["cases"]}
    assert ratios == {("dm", 1): 1.0, ("dm", 4): 1.6, ("lvm", 1): 1.0, ("lvm", 2): 3.0}
    assert data["cases"][1]["longest_stall_ms"] == 80.0
