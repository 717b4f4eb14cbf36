"""The ``extend`` operation of a crash-state lifecycle (opt-in: ``--operations extend``).

``snapkit snapshot watch NAME --extend-at 0.01 --extend-by 8M --once`` looks once and grows
the COW, since any COW in use is more than 0.01 % full: a real extend inside the recorded
window, under the writers, between the second snapshot's digest and its discard -- so its
states are judged like every other state of that snapshot: it must be active and exactly its
tree as taken (an extend must never lose or change a snapshot), the origin's acknowledged
writes all there, nothing suspended or frozen. dm grows the sparse COW file, ``losetup -c``
and reloads the snapshot's table; lvm runs ``lvextend``. lvm-thin has no COW to grow (snapkit
refuses), and dm-direct's is not recorded here (issue 17 names dm and lvm).

The recording checks the extend happened (the COW is larger after it): a watch that only
looked would make states that prove nothing. Standard library and snapkit only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from vmtests.guest.crashstates.layout import Kind
from vmtests.guest.proc import run

OPERATION = "extend"
METHODS = ("dm", "lvm")
ARGS = ("--extend-at", "0.01", "--extend-by", "8M", "--once")


def wanted(k: Kind, operations: tuple[str, ...]) -> bool:
    return OPERATION in operations and k.method in METHODS


def record(op: Callable[..., None], k: Kind, name: str) -> dict[str, int]:
    """Run the extend of snapshot ``name`` as the recorded operation ``extend`` (``op`` is
    the recorder's: its own process, between the marks); its COW's bytes before and after."""
    before = cow_bytes(k, name)
    op(OPERATION, "snapshot", "watch", name, *ARGS)
    after = cow_bytes(k, name)
    if after <= before:
        raise RuntimeError(f"recording: snapshot watch did not grow {name}'s COW ({before} B)")
    return {"before": before, "after": after}


def cow_bytes(k: Kind, name: str) -> int:
    """The size of ``name``'s COW: its file (dm) or its LV (lvm), from snapkit's record."""
    with open(f"{k.state}/state.json", encoding="utf-8") as f:
        doc = json.load(f)
    details = next(x for x in doc["snapshots"] if x["name"] == name)["details"]
    if k.lvm:
        lv = f"{details['vg']}/{details['lv']}"
        out = run(["lvs", "--noheadings", "--nosuffix", "--units", "b", "-o", "lv_size", lv])
        return int(out.out.strip())
    return os.path.getsize(details["cow_file"])


__all__ = ["ARGS", "METHODS", "OPERATION", "cow_bytes", "record", "wanted"]
