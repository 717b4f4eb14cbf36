"""Power cuts of a merge beside a sibling (issue 17): after the reboot and ``snapkit recover``,
does the sibling snapshot ``b`` still hold exactly its own point in time?

The merge-sibling kind's base has two snapshots of one origin: ``a`` (the kind's ``name``,
taken after 24 acknowledged files) and, after 40 more files and 12 MiB of ballast, ``b``
(``sibling_name``), after which 16 more files and 2 MiB land on the origin. The cut falls
inside ``snapshot merge a``. Merging ``a`` rewrites on the origin every chunk written since
``a`` -- the ballast among them, which ``b`` has no copy of yet -- so the kernel must copy each
such chunk into ``b``'s COW before the merge overwrites it. A cut anywhere in that merge must
leave ``b``:

* ``active`` -- never absent, never invalid: the merge of ``a`` must never cost ``b``;
* fsck-clean, holding every file acknowledged before it (the base's ledger up to
  ``before-b``), with exactly the tree digested at its creation (``expected-b``).

Its negative control (``sibling_changed``) runs the same check with an acknowledged file of
``b``'s rewritten and a file added -- a write into the sibling, made on a throwaway layer over
its device so the real ``b`` stays as it is -- and must see it. Standard library only.
"""

from __future__ import annotations

import json
import os
from typing import Any

from vmtests.guest.faults.copy import Copy, check_copy
from vmtests.guest.faults.kind import Kind, read_int, snapkit
from vmtests.guest.proc import run

RW_OPTS = {"xfs": "nouuid"}  # the layer shares the origin's uuid; every other: the defaults


def _check(k: Kind, dev: str, plant: Any = None) -> Copy:
    return check_copy(
        k,
        dev,
        where="w",
        before=read_int(k.sibling_before),
        expected=k.sibling_expected,
        plant=plant,
    )


def problems_of(copy: Copy) -> list[str]:
    """What is wrong with the sibling's copy (empty: it is exactly its own point in time)."""
    out = []
    if copy.mount_error:
        out.append(f"the sibling does not mount: {copy.mount_error}"[:600])
    if not copy.fsck_ok:
        out.append(f"fsck of the sibling: {copy.fsck_out[-400:]}")
    if copy.lost:
        out.append(f"the sibling lacks {copy.lost} files acked before it")
    if copy.equal is not True:
        out.append("the sibling no longer holds its own point in time (tree digest differs)")
    return out


def judge(k: Kind, snaps: dict[str, Any], out: dict[str, Any]) -> None:
    """The sibling's part of the oracle, into ``out`` (its ``problems`` too)."""
    shown = snaps.get(k.sibling_name, {})
    state = out["sibling"] = shown.get("state", "absent")
    out["sibling_equal"] = False
    if state != "active":
        out["problems"].append(
            f"sibling {k.sibling_name}: {state} after recover of a merge beside it"
        )
        return
    copy = _check(k, shown["device"])
    out.update(sibling_equal=copy.equal is True, sibling_lost=copy.lost, fsck_sibling=copy.fsck_ok)
    out["sibling_acked_checked"] = read_int(k.sibling_before)
    out["problems"] += problems_of(copy)


def _write_into(k: Kind, layer: str) -> None:
    """The planted fault: ``f1`` of ``b``'s ledger rewritten and a file added, through a
    read-write mount of the throwaway layer."""
    if k.fs == "btrfs":  # the layer shares the origin's and the sibling's fsid
        run(["btrfs", "device", "scan", "--forget"], check=False)
    run(["mount", "-t", k.fs, "-o", RW_OPTS.get(k.fs, "rw"), layer, k.snap_mnt])
    try:
        for path, data in ((f"{k.snap_mnt}/w/f1", b"rewritten"), (f"{k.snap_mnt}/planted", b"x")):
            with open(path, "wb") as f:
                f.write(data)
                os.fsync(f.fileno())
    finally:
        run(["umount", k.snap_mnt], check=False)


def control(k: Kind) -> bool:
    """True when the sibling's check sees a write planted into (a layer over) the sibling."""
    listed = snapkit(k, "snapshot", "list", "--json", check_ok=False)
    shown = {s["name"]: s for s in json.loads(listed.stdout or "[]")}.get(k.sibling_name)
    if not shown or shown.get("state") != "active":
        return False  # nothing to plant into: the cut fails on the sibling already
    return bool(problems_of(_check(k, shown["device"], lambda layer: _write_into(k, layer))))


__all__ = ["control", "judge", "problems_of"]
