"""Judge crash states of one recorded kind, many in one boot.

The replay disk only moves forward: it holds the log replayed up to some entry, and a state
with a later ``upto`` advances it. Each state is then judged on a throwaway layer over it (a
transient dm snapshot, its COW on tmpfs) -- the state's reordered writes go into the layer,
and so does everything recover, a mount's journal replay and fsck write -- and the kind's
slices are made again over the layer under their recorded names, as after a reboot.

The oracle, per state (its operation and what had been acknowledged come from the log's
marks, :func:`plan.situation`):

* ``snapkit recover`` exits 0;
* the origin, mounted, holds every file whose ``ack:TAG:N`` mark is before the cut -- the
  base's 24, the writers' -- and fscks clean; once the first snapshot's merge may have run,
  the files acknowledged after that snapshot are no longer the origin's: a merged origin must
  instead equal the snapshot's tree (less the later writers' folder);
* each snapshot is active (it fscks clean and its tree is exactly as taken) or cleanly absent,
  as its operation allows: absent before its create started, active once its create
  returned, absent once its merge or discard returned;
* no dm device is suspended, no filesystem frozen.

The negative controls: ``wb``/``wc``, the writer that skips its fsync, must lose an
acknowledged file in some state; the state-file control's prepared device (``ctl``, made
with ``SNAPKIT_TEST_STATE_NO_FSYNC``) must fail to come back in some state after it
returned; and a replay that drops the COW's metadata writes (its commits' FUA ignored) must
leave a snapshot that is not whole.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from vmtests.guest import check, loopctl, mountctl
from vmtests.guest.crashstates import logwrites, thin
from vmtests.guest.crashstates.layout import (
    DISK_MIB,
    MIB,
    Kind,
    dm_create,
    dm_remove,
    loop_of,
    make_slices,
    mount_keep,
    teardown,
    unmount,
)
from vmtests.guest.crashstates.plan import CrashState, Situation, situation
from vmtests.guest.faults.copy import count_lost
from vmtests.guest.faults.judge import frozen, suspended
from vmtests.guest.faults.kind import dm_names, in_process
from vmtests.guest.proc import CommandError, log, run

Check = Callable[[Kind, Situation, dict[str, Any], dict[str, Any]], None]
LAYER_COW_MIB = 256
CTL_TRIES = 6  # states after the control's prepare returned in which it is tried
CONTROL_TAGS = {"w2": "wb", "w3": "wc"}
BASE_FILES = 24


class Replay:
    """The replay disk and the state it holds (every entry up to ``at`` applied).

    The disk is a sparse file on tmpfs the size of the logged disk (zeroes, as the data disk
    started), seen as a block device through a loop device (``device``), which each state's
    layer takes as its origin. In RAM rather than on a virtio disk because every state
    reads it again -- its mounts, fsck, the acknowledged files, the snapshots' trees, all
    through the layer to it -- and under TCG a virtio read costs several times a tmpfs one
    (200 small files through the same stack: 0.4-0.9 s against 0.15-0.3 s). The entries are
    written into the file; the loop reads the file's pages, so it sees every write at once
    (nothing opens the loop device itself buffered: dm-snapshot reads it by bio)."""

    def __init__(self, k: Kind, log: logwrites.Log) -> None:
        self.k = k
        self.log = log
        self.log_fd = os.open(k.log_disk, os.O_RDONLY)
        self.file = k.replay_file
        with open(self.file, "wb") as f:
            f.truncate(DISK_MIB * MIB)
        self.dev_fd = os.open(self.file, os.O_RDWR)
        self.device = loopctl.attach(self.file)
        self.at = 0
        self.bytes = 0

    def advance(self, upto: int) -> None:
        if upto < self.at:
            raise ValueError(f"the replay is at {self.at}; it cannot go back to {upto}")
        todo = self.log.entries[self.at : upto]  # entries are numbered from 1
        self.bytes += logwrites.apply(self.log, self.log_fd, self.dev_fd, todo)
        self.at = upto

    def close(self) -> None:
        os.close(self.log_fd)
        os.close(self.dev_fd)
        try:
            loopctl.detach(self.device)
        finally:
            os.unlink(self.file)


CHUNK_BYTES = 8 * 512  # the layer's chunk (the table's last field)


def layer_up(name: str, device: str, cow_mib: int) -> str:
    """A throwaway layer over ``device``: a transient (``N``) dm snapshot named ``name`` whose
    COW is a fresh sparse file on tmpfs behind a loop device; its device path.

    The loop and the size are ioctls (:mod:`vmtests.guest.loopctl`), the table one by
    :func:`dm_create`. The COW file is made anew for every layer, never reused: a transient
    snapshot reads back only chunks it wrote itself, but a new file also hands tmpfs back
    what the previous state's COW took, and attaching costs microseconds, so reuse would buy
    nothing.

    The layer's chunk 0 is then rewritten with its own bytes. A transient store puts its first
    exception at the COW's chunk 0, and the COW's loop device is scanned by LVM like any disk:
    if a state's first landed write hit a PV's first chunk, the loop showed that PV's label and
    LVM refused the VG ("duplicate PV devices"; 2 of 1,080 default states, 2026-12-04). The
    disk's chunk 0 is the keep slice's ext4, never a label, and an identical write changes
    nothing in the state."""
    cow = f"/tmp/{name}.cow"
    with open(cow, "wb") as f:
        f.truncate(cow_mib << 20)
    loop = loopctl.attach(cow)  # losetup -f --show COW
    dm_create(name, f"0 {loopctl.sectors(device)} snapshot {device} {loop} N 8")
    top = f"/dev/mapper/{name}"
    fd = os.open(top, os.O_RDWR)
    try:
        os.pwrite(fd, os.pread(fd, CHUNK_BYTES, 0), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return top


def layer_down(name: str) -> None:
    """The loop and COW file of :func:`layer_up`'s layer ``name`` (its dm device removed
    before: a loop still open is only set to detach when closed)."""
    cow = f"/tmp/{name}.cow"
    loop = loop_of(cow)
    if loop:
        try:
            loopctl.detach(loop)
        except OSError as exc:
            log(f"loop detach {loop}: {exc}")
    if os.path.exists(cow):
        os.unlink(cow)


@contextmanager
def throwaway(device: str) -> Iterator[str]:
    """:func:`vmtests.guest.check.layer` (its name, its COW size, the same table), by ioctl:
    a snapshot's mount goes through one of these in most states."""
    made = False
    try:
        top = layer_up(check.LAYER, device, 96)
        made = True
        yield top
    finally:
        if made or check.LAYER in dm_names():
            dm_remove(check.LAYER)
        layer_down(check.LAYER)


@contextmanager
def mounted(fs: str, device: str, mountpoint: str) -> Iterator[str]:
    """:func:`vmtests.guest.check.mounted` (the same options, btrfs's forget first) by
    mount(2) and umount2(2)."""
    os.makedirs(mountpoint, exist_ok=True)
    if fs == "btrfs":  # the snapshot and the layer share the origin's fsid: forget the others
        run(["btrfs", "device", "scan", "--forget"], check=False)
    mountctl.mount(fs, device, mountpoint, check.MOUNT_OPTS.get(fs, "ro"))
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)


def judge_state(
    k: Kind,
    replay: Replay,
    st: CrashState,
    facts: dict[str, Any],
    marks: list[tuple[int, str]],
    ctl_budget: list[int],
    check: Check | None = None,
) -> dict[str, Any]:
    """``check``: the oracle after the state is up (default :func:`_check`; a group kind's is
    :func:`vmtests.guest.crashstates.group.check`)."""
    t0 = time.monotonic()
    sit = situation(marks, st.cut)
    out: dict[str, Any] = {
        "cut": st.cut,
        "upto": st.upto,
        "replayed": st.method,
        "seed": st.seed,
        "extra": len(st.extra),
        "operation": sit.operation,
        "op_returned": sit.acked,
        "control": st.control,
        "problems": [],
        "controls": {},
    }
    problems: list[str] = out["problems"]
    lo = st.upto
    if st.control == "cow-fua-drop":
        lo = next(i for i, m in marks if m == "create.start")
    replay.advance(lo)
    dev = layer_up(k.layer, replay.device, LAYER_COW_MIB)
    try:
        _land(k, replay, st, facts, lo, dev)
        make_slices(k, dev)
        mount_keep(k)
        _state_file_control(k, sit, ctl_budget, out)
        (check or _check)(k, sit, facts, out)
    except (CommandError, RuntimeError, OSError, ValueError) as exc:
        problems.append(f"judge: {type(exc).__name__}: {exc}"[:800])
    finally:
        teardown(k, k.layer)
        layer_down(k.layer)
    excuse_lvm_torn(st, out)
    out["ok"] = not problems
    out["seconds"] = round(time.monotonic() - t0, 2)
    return out


def _land(
    k: Kind, replay: Replay, st: CrashState, facts: dict[str, Any], lo: int, dev: str
) -> None:
    """Into the layer: the entries after the replay disk's point that this state landed."""
    entries = replay.log.entries
    if st.control == "cow-fua-drop":
        ranges = [tuple(r) for r in facts.get("cow_meta", [])]
        todo = [
            e
            for e in entries[lo : st.upto]
            if not logwrites.covers(e, ranges, replay.log.sectorsize)
        ]
    else:
        todo = [entries[i - 1] for i in st.extra]
    if not todo:
        return
    fd = os.open(dev, os.O_RDWR)
    try:
        logwrites.apply(replay.log, replay.log_fd, fd, todo)
        os.fsync(fd)
    finally:
        os.close(fd)


def _state_file_control(k: Kind, sit: Situation, budget: list[int], out: dict[str, Any]) -> None:
    """Recover the control's own state directory first (nothing else is up yet, so it adopts
    nothing of the real kind's): its prepared device, made by a command that had returned,
    must come back. With the planted no-fsync save it sometimes does not: caught."""
    if not sit.did("ctl.done") or budget[0] <= 0:
        return
    budget[0] -= 1
    rec = in_process(k.ctl_state, "recover", check_ok=False)
    back = os.path.exists(f"/dev/mapper/{k.ctl_prepared}")
    out["controls"]["state-no-fsync"] = rec.returncode != 0 or not back
    dm_remove(k.ctl_prepared)


def _check(k: Kind, sit: Situation, facts: dict[str, Any], out: dict[str, Any]) -> None:
    problems: list[str] = out["problems"]
    s1, s2 = k.snapshots
    if k.lvm:
        activate_vg(k.vg, out)
    shown = recovered(k, out)
    states = {name: shown.get(name, {}).get("state", "absent") for name in (s1, s2)}
    out["snapshots"] = states
    problems += thin.missing_nodes(k, states, shown)
    merged = states[s1] == "absent" and sit.did("merge-start.start")
    for name, allowed in (
        (s1, _allowed(sit, "create", "merge")),
        (s2, _allowed(sit, "create2", "discard")),
    ):
        if states[name] not in allowed:
            problems.append(f"snapshot {name}: {states[name]} where {'/'.join(allowed)} may be")
    mountctl.mount(k.fs, k.origin_dev, k.mnt)
    out["frozen"] = frozen([k.mnt, k.keep])
    try:
        _origin_files(k, sit, merged, facts, out)
    finally:
        mountctl.umount(k.mnt)
    fsck = check.fsck(k.fs, k.origin_dev)
    out["fsck_origin"] = fsck.ok
    if not fsck.ok:
        problems.append(f"fsck of the origin: {fsck.out[-300:]}")
    snapshots_and_leftovers(k, [s1, s2], states, shown, facts, out)


def snapshots_and_leftovers(
    k: Kind,
    names: list[str],
    states: dict[str, str],
    shown: dict[str, dict[str, Any]],
    facts: dict[str, Any],
    out: dict[str, Any],
) -> None:
    """The end of every oracle: each active snapshot of ``names`` whole (:func:`_snapshot`),
    no device left suspended, no filesystem left frozen (``out["frozen"]``, probed before)."""
    problems: list[str] = out["problems"]
    for name in names:
        if states[name] == "active":
            _snapshot(k, name, shown[name]["device"], facts["expected"][name], out)
    out["suspended"] = suspended()
    if out["suspended"]:
        problems.append(f"devices left suspended: {out['suspended']}")
    if out["frozen"]:
        problems.append(f"filesystems left frozen: {out['frozen']}")


# What LVM says of a PV whose metadata header points at text that never landed (RELIABILITY.md,
# crash states, e4lv cut 4677): LVM writes the text and then the header with no flush between.
LVM_TORN = ("Checksum error", "invalid metadata text", "begins with invalid name")


def activate_vg(vg: str, out: dict[str, Any]) -> None:
    """What the boot's LVM activation does; notes LVM's own torn metadata (``LVM_TORN``),
    which :func:`excuse_lvm_torn` excuses in a reordered state only."""
    shown = run(["vgchange", "-ay", vg], check=False).out
    if any(t in shown for t in LVM_TORN):
        out["lvm_metadata_torn"] = True


def excuse_lvm_torn(st: CrashState, out: dict[str, Any]) -> None:
    """A state whose LVM metadata is torn is legal only if it is reordered: LVM 2.03 writes
    its metadata text and the header pointing at it with no flush between, so a volatile cache
    may keep the header alone, and no LV of the VG can be read -- LVM's behaviour, not
    snapkit's (snapkit never writes LVM metadata itself). Such a state is kept as excused,
    with its problems, and counted apart; at a durable point the same is a failure."""
    if not out.get("lvm_metadata_torn") or not out["problems"]:
        return
    if st.extra:
        out["excused"] = list(out["problems"])
        out["problems"].clear()
    else:
        out["problems"].append("LVM metadata torn at a durable point")


def recovered(k: Kind, out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run ``snapkit recover`` (its exit noted, a failure a problem), then the snapshots it
    lists, by name."""
    rec = in_process(k.state, "recover", "--json", check_ok=False)
    out["recover_exit"] = rec.returncode
    log(f"recover: {' '.join(rec.stdout.split())[-800:]}")  # what it did, for a replay's reader
    if rec.returncode != 0:
        out["problems"].append(f"recover exited {rec.returncode}: {rec.stderr.strip()[-400:]}")
    listed = in_process(k.state, "snapshot", "list", "--json", check_ok=False)
    try:
        return {s["name"]: s for s in json.loads(listed.stdout or "[]")}
    except ValueError:
        return {}


def _allowed(sit: Situation, create: str, gone: str) -> tuple[str, ...]:
    """What a snapshot may be after recover, from where the cut fell in its life."""
    if not sit.did(f"{create}.start"):
        return ("absent",)
    if not sit.did(f"{create}.done"):
        return ("absent", "active")
    first = "merge-start" if gone == "merge" else gone
    last = "merge-finish" if gone == "merge" else gone
    if not sit.did(f"{first}.start"):
        return ("active",)
    if not sit.did(f"{last}.done"):
        return ("absent", "active")
    return ("absent",)


def _origin_files(
    k: Kind, sit: Situation, merged: bool, facts: dict[str, Any], out: dict[str, Any]
) -> None:
    problems: list[str] = out["problems"]
    checks = [("w", BASE_FILES)]
    s1 = k.snapshots[0]
    if merged:  # the origin is the snapshot's tree again, plus what came after the merge
        equal = check.tree_hash(k.mnt, skip=("lost+found", "w3", "wc")) == facts["expected"][s1]
        out["merge_equal"] = equal
        if not equal:
            problems.append("after the merge the origin differs from the snapshot")
    else:
        checks.append(("w2", sit.acks.get("w2", 0)))
    checks.append(("w3", sit.acks.get("w3", 0)))
    out["acked_checked"] = sum(n for _, n in checks)
    out["acked_lost"] = sum(count_lost(f"{k.mnt}/{d}", n) for d, n in checks)
    if out["acked_lost"]:
        problems.append(f"{out['acked_lost']} acknowledged writes lost from the origin")
    ctl = [
        (CONTROL_TAGS[d], sit.acks.get(CONTROL_TAGS[d], 0))
        for d in ("w2", "w3")
        if not (merged and d == "w2")
    ]
    tried = sum(n for _, n in ctl)
    if tried:
        lost = sum(count_lost(f"{k.mnt}/{d}", n) for d, n in ctl)
        out["controls"]["skip-flush"] = lost > 0


def _snapshot(k: Kind, name: str, dev: str, expected: str, out: dict[str, Any]) -> None:
    problems: list[str] = out["problems"]
    result = check.fsck(k.fs, dev)
    if not (result.ok or check.xfs_log_only(result)):
        problems.append(f"fsck of snapshot {name}: {result.out[-300:]}")
    try:
        with throwaway(dev) as layer, mounted(k.fs, layer, k.snap_mnt):
            equal = check.tree_hash(k.snap_mnt) == expected
    except CommandError as exc:
        problems.append(f"snapshot {name} does not mount: {exc}"[:500])
        return
    out.setdefault("snapshot_whole", {})[name] = equal
    if not equal:
        problems.append(f"snapshot {name} is not its tree as taken")


__all__ = ["Check", "Replay", "judge_state", "recovered", "snapshots_and_leftovers"]
