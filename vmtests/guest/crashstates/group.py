"""Crash states of a snapshot group (issue 17): two filesystems under one group's verbs.

A group kind (method ``group-dm``, ``group-dm-direct`` or ``group-lvm``) puts two origins,
``a`` and ``b``, on slices of the one logged disk (after the keep slice: a power cut is one
instant for both, and the log puts their writes in one order), with a ledger writer on each
(tags ``a2``/``b2``, then ``a3``/``b3``; the skip-flush control writers ``xa``/``xb``, then
``ya``/``yb``). The lifecycle, each verb a separate ``snapkit`` process between marks:

    set-up: the keep ext4; per member a prepared device (dm, dm-direct: a direct-io loop
    over its slice) or an LV of one VG whose PVs are the two slices (lvm); its filesystem,
    mounted on /m/KID/a and /m/KID/b; 24 base files each
    -- mark ``base`` --
    ``create``  ``snapshot create A B --name gKID`` (under the writers), more writes, ballast;
    writers stop, origins unmounted, each member's tree digest taken
    ``merge-start`` (``snapshot merge gKID``), ``kernel-merge``, ``merge-finish`` (``--wait``)
    writers again; ``create2`` group tKID, its members' digests; ``discard`` of tKID
    -- mark ``end`` --

The oracle, per state, after ``snapkit recover`` (:func:`check`): recover exits 0; for every
member no acknowledged file is lost (or, once its group's merge may have run and the member is
gone, its origin is exactly its snapshot's tree, less the later writers' folders) and its
origin fscks clean; each group is *atomic*: its members' snapshots are all active, each its
tree exactly as taken, or all cleanly absent -- never some present and some absent -- and
each as its verb allows (:func:`judge._allowed`); nothing suspended, nothing frozen.

The negative control ``group-split``: states where the group must be whole (after its create
returned, before its merge began) judged with one member dropped from the state file before
recover, as if the create had recorded only the other: the atomicity check must fail them.
btrfs is not a group kind (a dm suspend does not freeze it: dm groups refuse it). Standard
library and snapkit only.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from vmtests.guest import check as fscheck
from vmtests.guest import mountctl
from vmtests.guest.crashstates import logwrites, plan
from vmtests.guest.crashstates.judge import (
    _allowed,
    activate_vg,
    recovered,
    snapshots_and_leftovers,
)
from vmtests.guest.crashstates.layout import (
    DISK_MIB,
    KEEP_MIB,
    MIB,
    MKFS,
    Kind,
    loop_of,
)
from vmtests.guest.crashstates.record import (
    BASE_FILES,
    COW_SIZE,
    Recorder,
    _acks,
    keep_up,
    logged,
)
from vmtests.guest.faults.copy import count_lost
from vmtests.guest.faults.judge import frozen
from vmtests.guest.faults.kind import in_process
from vmtests.guest.faults.main import ballast, write_files
from vmtests.guest.proc import run

MEMBERS = ("a", "b")
MEMBER_MIB = (DISK_MIB - KEEP_MIB) // 2 // 4 * 4  # whole LVM extents
LV_SIZE = "80M"  # of a member's PV, leaving room for its snapshot's COW_SIZE
MAX_FREEZE = "120"  # an lvm group's lvcreates run inside the freeze; seconds each under TCG
SPLIT_STATES = 2
TAGS = {"create": ("2", "x"), "create2": ("3", "y")}  # writer, skip-flush writer, per member


@dataclass(frozen=True)
class GroupKind(Kind):
    """A group kind's names: the members' slices, origins, mount points and snapshots."""

    @property
    def member_method(self) -> str:
        """The method every member is snapshotted with (``group-lvm`` -> ``lvm``)."""
        return self.method.removeprefix("group-")

    def slices(self) -> list[tuple[str, int, int]]:
        out, at = [], 0
        for suffix, mib in (("k", KEEP_MIB), *((m, MEMBER_MIB) for m in MEMBERS)):
            out.append((f"{self.kid}{suffix}", at, mib * MIB // 512))
            at += mib * MIB // 512
        return out

    def member_slice(self, m: str) -> str:
        return f"/dev/mapper/{self.kid}{m}"

    def loop_slices(self) -> tuple[str, ...]:
        return () if self.member_method == "lvm" else tuple(self.member_slice(m) for m in MEMBERS)

    def member_dev(self, m: str) -> str:
        return (
            f"/dev/{self.vg}/lv{m}"
            if self.member_method == "lvm"
            else f"/dev/mapper/o{self.kid}{m}"
        )

    def member_mnt(self, m: str) -> str:
        return f"{self.mnt}/{m}"  # the member's snapshot is GROUP-m: the suffix is m

    def mountpoints(self) -> tuple[str, ...]:
        return (self.snap_mnt, *(self.member_mnt(m) for m in MEMBERS))

    @property
    def groups(self) -> tuple[str, str]:
        """The lifecycle's two groups: the one merged, the one discarded."""
        return f"g{self.kid}", f"t{self.kid}"

    def members_of(self, group: str) -> list[str]:
        return [f"{group}-{m}" for m in MEMBERS]


def _group_kind(k: Kind) -> GroupKind:
    if not isinstance(k, GroupKind):
        raise TypeError(f"{k.kid} is not a group kind")
    return k


def record(kind: Kind) -> dict[str, Any]:
    """Record the group lifecycle (the module docstring) under dm-log-writes; the facts the
    judge needs: every member snapshot's expected digest, the writers' counts."""
    k = _group_kind(kind)
    t0 = time.monotonic()
    tags = tuple(
        f"{w}{m}" if w in "xy" else f"{m}{w}" for w in ("2", "x", "3", "y") for m in MEMBERS
    )
    r = logged(k, tags)
    g, t = k.groups
    facts: dict[str, Any] = {"kid": k.kid, "expected": {}}
    try:
        keep_up(k)
        if k.member_method == "lvm":
            slices = [k.member_slice(m) for m in MEMBERS]
            run(["pvcreate", "-q", "-y", *slices])
            run(["vgcreate", "-q", k.vg, *slices])
            for m, pv in zip(MEMBERS, slices, strict=True):
                run(["lvcreate", "-q", "-y", "-L", LV_SIZE, "-n", f"lv{m}", k.vg, pv])
        else:
            for m in MEMBERS:
                loop = loop_of(k.member_slice(m))
                in_process(k.state, "device", "prepare", loop, "--name", f"o{k.kid}{m}")
        for m in MEMBERS:
            run([*MKFS[k.fs], k.member_dev(m)])
            mountctl.mount(k.fs, k.member_dev(m), k.member_mnt(m))
            write_files(f"{k.member_mnt(m)}/w", f"/tmp/ledger-{k.kid}{m}", 1, BASE_FILES)
        run(["sync"])
        r.mark("base")
        mnts = [k.member_mnt(m) for m in MEMBERS]
        create = ["snapshot", "create", *mnts, "--method", k.member_method]
        create += ["--cow-size", COW_SIZE, "--max-freeze", MAX_FREEZE]
        _writers(r, k, "create")
        r.op("create", *create, "--name", g)
        r.wait_acks("a2", 5)
        for m in MEMBERS:
            ballast(f"{k.member_mnt(m)}/ballast", 2)
        r.wait_acks("b2", 3)
        r.stop_writers()
        for m in MEMBERS:
            mountctl.umount(k.member_mnt(m))
        for name in k.members_of(g):
            facts["expected"][name] = r.digest(name)
        r.op("merge-start", "snapshot", "merge", g)
        r.mark("kernel-merge.start")
        r.wait_merged(g)
        r.mark("kernel-merge.done")
        if in_process(k.state, "snapshot", "status", g, check_ok=False).returncode == 0:
            r.op("merge-finish", "snapshot", "merge", g, "--wait")
        else:  # dm-direct's merge is a roll-back: its start returned with nothing to finish
            r.mark("merge-finish.start")
            r.mark("merge-finish.done")
        for m, name in zip(MEMBERS, k.members_of(g), strict=True):
            mountctl.mount(k.fs, k.member_dev(m), k.member_mnt(m))
            if fscheck.tree_hash(k.member_mnt(m)) != facts["expected"][name]:
                raise RuntimeError(f"recording: after the merge origin {m} is not {name}")
        _writers(r, k, "create2")
        r.op("create2", *create, "--name", t)
        r.wait_acks("a3", 3)
        for name in k.members_of(t):
            facts["expected"][name] = r.digest(name, origin_mounted=True)
        r.op("discard", "snapshot", "discard", t)
        r.wait_acks("b3", 3)
        r.stop_writers()
        for m in MEMBERS:
            mountctl.umount(k.member_mnt(m))
        r.mark("end")
    finally:
        r.close()
    facts["acks"] = {tag: _acks(tag) for tag in tags}
    facts["record_s"] = round(time.monotonic() - t0, 1)
    return facts


def _writers(r: Recorder, k: GroupKind, op: str) -> None:
    """A writer and a skip-flush control writer on every member, before ``op``."""
    writer, control = TAGS[op]
    for m in MEMBERS:
        r.start_writers(f"{m}{writer}", f"{control}{m}", k.member_mnt(m))


def control_states(
    entries: tuple[logwrites.Entry, ...], facts: dict[str, Any]
) -> list[plan.CrashState]:
    """The ``group-split`` control: durable points after the group's create returned and
    before its merge began, where the group must be whole."""
    lo, hi = plan.window(entries, "create.done", "merge-start.start")
    points = plan.durable_points(entries, lo, hi)
    pick = [points[-1], points[len(points) // 2]][:SPLIT_STATES] if points else []
    return [plan.CrashState(p.cut, p.upto, p.method, control="group-split") for p in pick]


def drop_member(k: GroupKind) -> None:
    """The planted bug of ``group-split``: member ``b`` of the first group gone from the state
    file (its record and its place in the group), as if the create had recorded only ``a``."""
    path = f"{k.state}/state.json"
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    dropped = k.members_of(k.groups[0])[1]
    doc["snapshots"] = [s for s in doc.get("snapshots", []) if s.get("name") != dropped]
    for group in doc.get("groups", []):
        group["members"] = [m for m in group.get("members", []) if m != dropped]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())


def check(kind: Kind, sit: plan.Situation, facts: dict[str, Any], out: dict[str, Any]) -> None:
    """The group oracle (the module docstring), on a state already up (slices, keep)."""
    k = _group_kind(kind)
    problems: list[str] = out["problems"]
    if k.member_method == "lvm":
        activate_vg(k.vg, out)
    if out.get("control") == "group-split" and os.path.exists(f"{k.state}/state.json"):
        drop_member(k)
    shown = recovered(k, out)
    g, t = k.groups
    names = k.members_of(g) + k.members_of(t)
    states = {n: shown.get(n, {}).get("state", "absent") for n in names}
    out["snapshots"] = states
    for group, create, gone in ((g, "create", "merge"), (t, "create2", "discard")):
        allowed = _allowed(sit, create, gone)
        members = k.members_of(group)
        for n in members:
            if states[n] not in allowed:
                problems.append(f"snapshot {n}: {states[n]} where {'/'.join(allowed)} may be")
        whole = len({states[n] for n in members}) == 1
        out.setdefault("atomic", {})[group] = whole
        if not whole:
            split = ", ".join(f"{n} {states[n]}" for n in members)
            problems.append(f"group {group} is split: {split}")
    for m in MEMBERS:
        os.makedirs(k.member_mnt(m), exist_ok=True)
    mounted: list[str] = []
    try:
        for m in MEMBERS:
            mountctl.mount(k.fs, k.member_dev(m), k.member_mnt(m))
            mounted.append(k.member_mnt(m))
        out["frozen"] = frozen([*mounted, k.keep])
        merged = {
            m: states[f"{g}-{m}"] == "absent" and sit.did("merge-start.start") for m in MEMBERS
        }
        _member_files(k, sit, merged, facts, out)
    finally:
        for mnt in reversed(mounted):
            mountctl.umount(mnt)
    for m in MEMBERS:
        fsck = fscheck.fsck(k.fs, k.member_dev(m))
        out.setdefault("fsck_origin", {})[m] = fsck.ok
        if not fsck.ok:
            problems.append(f"fsck of origin {m}: {fsck.out[-300:]}")
    snapshots_and_leftovers(k, names, states, shown, facts, out)


def _member_files(
    k: GroupKind, sit: plan.Situation, merged: dict[str, bool], facts: dict[str, Any],
    out: dict[str, Any],
) -> None:  # fmt: skip
    """Every member's acknowledged files (or, merged, its origin equal to its snapshot); the
    skip-flush writers' files, for the control."""
    problems: list[str] = out["problems"]
    g = k.groups[0]
    checked = lost = tried = ctl_lost = 0
    for m in MEMBERS:
        mnt = k.member_mnt(m)
        checks = [("w", BASE_FILES), (f"{m}3", sit.acks.get(f"{m}3", 0))]
        controls = [f"y{m}"]
        if merged[m]:  # the origin is the snapshot's tree again, plus what came after
            digest = fscheck.tree_hash(mnt, skip=("lost+found", f"{m}3", f"y{m}"))
            equal = digest == facts["expected"][f"{g}-{m}"]
            out.setdefault("merge_equal", {})[m] = equal
            if not equal:
                problems.append(f"after the merge origin {m} differs from its snapshot")
        else:
            checks.append((f"{m}2", sit.acks.get(f"{m}2", 0)))
            controls.append(f"x{m}")
        checked += sum(n for _, n in checks)
        lost += sum(count_lost(f"{mnt}/{d}", n) for d, n in checks)
        for tag in controls:
            n = sit.acks.get(tag, 0)
            tried += n
            ctl_lost += count_lost(f"{mnt}/{tag}", n) if n else 0
    out["acked_checked"], out["acked_lost"] = checked, lost
    if lost:
        problems.append(f"{lost} acknowledged writes lost from the origins")
    if tried:
        out["controls"]["skip-flush"] = ctl_lost > 0


__all__ = ["GroupKind", "check", "control_states", "drop_member", "record"]
