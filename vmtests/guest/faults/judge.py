"""Power cuts, the judge (issue 6): after the reboot, ``snapkit recover``, then the oracle.

The oracle, for a cut of any phase:

* recover exits 0;
* the origin, mounted (its journal replays, as at the next boot), holds every acknowledged
  file intact -- the base's files and the writer's -- and then fscks clean; after a finished
  merge it holds the snapshot's tree instead, exactly;
* the snapshot is ``active`` or cleanly ``absent`` (a create or a discard cut short, a merge
  finished); an extension never loses it, so there it must be active. An active snapshot
  fscks clean and holds every file acknowledged before it was taken; one that existed before
  the operation (merge, discard, extend) still has exactly its tree;
* no dm device is left suspended and no filesystem left frozen;
* in the merge-sibling phase (issue 17), the sibling snapshot is active and holds exactly its
  own point in time (``sibling.py``, with its negative control ``sibling_changed``).

A stacked kind (``dm+crypt``, ``lvm+crypt``) is first brought up as a user would after the
reboot (``kind.boot``: the crypt mapping opened again with its key, ``recover`` -- twice on a
dm base, before and after the mapping is opened), every recover must exit 0, and on top:

* an active snapshot's device is its rebuilt plaintext layer ``NAME-crypt`` and, on ext4, its
  journal is clean before anything mounts it (the top filesystem was frozen for the copy);
* no ``NAME-park`` is left (recover moves a parked mapping back);
* a merge cut short and left active by recover is finished by ``snapshot merge NAME --wait``,
  as a user would: then the origin must equal the snapshot's tree, the crypt mapping sit over
  the base again, and neither ``NAME-crypt`` nor ``NAME-park`` be left.

A ZFS kind has no fsck: ``check.fsck`` scrubs its pool and reads ``zpool status``, for the
origin and the snapshot alike, and the snapshot is mounted read-only as it is.

Each checker has a negative control (``controls``): the same function, run on a planted fault
-- an acknowledged file renamed away, a file added to a tree, a frozen mount, a suspended
device, a zeroed superblock on a throwaway layer; for ZFS, which has no freeze and no dm
device, a throwaway pool whose data blocks are overwritten -- must report it. Standard library
only.
"""

from __future__ import annotations

import fcntl
import json
import os
from typing import Any

from vmtests.guest import check
from vmtests.guest.faults import sibling
from vmtests.guest.faults.copy import check_copy, count_lost, text
from vmtests.guest.faults.kind import MERGES, Kind, acked, attach, boot, read_int, snapkit
from vmtests.guest.proc import log, run

FITHAW = 0xC0045878
MAY_BE_ABSENT = {
    "create": True,
    "merge": True,
    "discard": True,
    "extend": False,
    "merge-sibling": True,  # the merged one; its sibling may never be absent (sibling.py)
}
SUPERBLOCK_AT = {"ext4": 0, "xfs": 0, "btrfs": 64 << 10}


def suspended() -> list[str]:
    """Every dm device the kernel shows suspended (sysfs: no process to start)."""
    out = []
    for kname in sorted(os.listdir("/sys/block")):
        path = f"/sys/block/{kname}/dm/suspended"
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                if f.read().strip() == "1":
                    out.append(kname)
    return out


def frozen(mounts: list[str]) -> list[str]:
    """The mounts that were frozen. FITHAW fails with EINVAL on a filesystem that is not; on
    one that is, it thaws it -- the probe repairs what it finds, after reporting it."""
    out = []
    for mnt in mounts:
        fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, FITHAW, 0)
            out.append(mnt)
        except OSError:
            pass
        finally:
            os.close(fd)
    return out


def state_problem(phase: str, state: str) -> str:
    """What is wrong with the snapshot's state after recover of a cut ``phase`` ("": nothing).
    Active, or cleanly absent where the phase may end without it; never merging, invalid or
    anything else: recover must have finished or undone what the cut left."""
    allowed = ("absent", "active") if MAY_BE_ABSENT[phase] else ("active",)
    return "" if state in allowed else f"{state} after recover of a cut {phase}"


def judge(k: Kind, spec: dict[str, Any]) -> dict[str, Any]:
    phase = spec["phase"]
    out: dict[str, Any] = {"problems": []}
    problems: list[str] = out["problems"]
    attach(k)
    recovers = boot(k) if k.crypt else [snapkit(k, "recover", "--json", check_ok=False)]
    out["recover_exit"] = max(rec.returncode for rec in recovers)
    for rec in recovers:
        log(f"recover said: {rec.stdout.strip()}")
        if rec.returncode != 0:
            problems.append(f"recover exited {rec.returncode}: {rec.stderr.strip()[-500:]}")
    listed = snapkit(k, "snapshot", "list", "--json", check_ok=False)
    snaps = {s["name"]: s for s in json.loads(listed.stdout or "[]")}
    state = out["snapshot"] = snaps.get(k.name, {}).get("state", "absent")
    before = read_int(k.before)
    run(["mount", "-t", k.fs, k.origin_dev, k.mnt])  # replays the journal, as a boot would
    out["frozen"] = frozen([k.mnt, k.keep])
    # A merge cut before the kernel began it leaves the snapshot (re-assembled): the origin
    # must then hold every acked write; once merged, it must equal the snapshot's tree.
    merged = phase in MERGES and state == "absent"
    ledgers = [("w", before)] if merged else [("w", acked(k.ledger)), ("w2", acked(k.ledger2))]
    out["acked_checked"] = sum(n for _, n in ledgers)
    out["acked_lost"] = sum(count_lost(f"{k.mnt}/{d}", n) for d, n in ledgers)
    if merged:
        out["merge_equal"] = check.tree_hash(k.mnt) == text(k.expected)
        if not out["merge_equal"]:
            problems.append("after the merge the origin differs from the snapshot")
    run(["umount", k.mnt])
    result = check.fsck(k.fs, k.origin_dev)
    out["fsck_origin"] = result.ok
    if not result.ok:
        problems.append(f"fsck of the origin: {result.out[-400:]}")
    if out["acked_lost"]:
        problems.append(f"{out['acked_lost']} acknowledged writes lost from the origin")
    wrong = state_problem(phase, state)
    if wrong:
        problems.append(f"snapshot {k.name}: {wrong}")
    if state == "active":
        _judge_snapshot(k, phase, snaps[k.name]["device"], before, out)
    if k.sibling:
        sibling.judge(k, snaps, out)
    if k.crypt:
        _judge_stack(k, phase, state, snaps.get(k.name, {}), out)
    out["suspended"] = suspended()
    if out["suspended"]:
        problems.append(f"devices left suspended: {out['suspended']}")
    if out["frozen"]:
        problems.append(f"filesystems left frozen: {out['frozen']}")
    out["ok"] = not problems
    if problems:
        _diagnose(k)
    if spec.get("controls"):
        out["controls"] = controls(k)
    return out


def _judge_snapshot(k: Kind, phase: str, dev: str, before: int, out: dict[str, Any]) -> None:
    problems: list[str] = out["problems"]
    where = "w" if k.snapped else "w2"
    copy = check_copy(
        k, dev, where=where, before=before, expected=k.expected if k.snapped else None
    )
    out["snapshot_lost"] = copy.lost
    if copy.equal is not None:
        out["snapshot_equal"] = copy.equal
        if not copy.equal:
            problems.append(f"the snapshot changed during a cut {phase}")
    if copy.mount_error:
        problems.append(f"the snapshot does not mount: {copy.mount_error}"[:600])
    out["fsck_snapshot"] = copy.fsck_ok
    if not copy.fsck_ok:
        problems.append(f"fsck of the snapshot: {copy.fsck_out[-400:]}")
    if out["snapshot_lost"]:
        problems.append(f"the snapshot lacks {out['snapshot_lost']} files acked before it")


def _judge_stack(
    k: Kind, phase: str, state: str, shown: dict[str, Any], out: dict[str, Any]
) -> None:
    """The stacked kind's own checks (the module's doc); the origin is unmounted here."""
    problems: list[str] = out["problems"]
    upper, park = f"{k.name}-crypt", f"{k.name}-park"
    if state == "active":
        dev = shown.get("device", "")
        if dev != f"/dev/mapper/{upper}":
            problems.append(f"the snapshot's device is {dev!r}, not its layer {upper}")
        elif k.fs == "ext4" and os.path.exists(dev):  # a missing one fails fsck already
            out["snapshot_journal_clean"] = not check.needs_recovery(dev)
            if not out["snapshot_journal_clean"]:
                problems.append(f"{upper}: the ext4 journal needs recovery (not frozen?)")
    if _dm_exists(park):
        problems.append(f"{park} left after recover")
    if phase not in MERGES or state != "active":
        return
    merged = snapkit(k, "snapshot", "merge", k.name, "--wait", "--json", check_ok=False)
    out["merge_finished"] = merged.returncode == 0
    if merged.returncode != 0:
        problems.append(f"merge --wait after recover: {merged.stderr.strip()[-500:]}")
        return
    run(["mount", "-t", k.fs, k.origin_dev, k.mnt])
    try:
        out["merge_equal"] = check.tree_hash(k.mnt) == text(k.expected)
    finally:
        run(["umount", k.mnt])
    if not out["merge_equal"]:
        problems.append("after merge --wait the origin differs from the snapshot")
    left = [name for name in (upper, park) if _dm_exists(name)]
    if left:
        problems.append(f"left after merge --wait: {left}")
    if _deps(k.crypt_name) != _deps_of_node(k.base_dev):
        problems.append(f"{k.crypt_name} is not back over {k.base_dev} after the merge")
    result = check.fsck(k.fs, k.origin_dev)
    if not result.ok:
        problems.append(f"fsck of the origin after merge --wait: {result.out[-400:]}")


def _dm_exists(name: str) -> bool:
    return run(["dmsetup", "info", name], check=False).ok


def _deps(name: str) -> str:
    """The major:minor a mapping sits on (``dmsetup deps``: the table, not its key)."""
    out = run(["dmsetup", "deps", name], check=False).out
    inside = out[out.find("(") + 1 : out.find(")")].replace(" ", "")
    return inside.replace(",", ":")


def _deps_of_node(path: str) -> str:
    st = os.stat(path)
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def _diagnose(k: Kind) -> None:
    """Into the judge's log, for a failed cut: what the kernel and the state file show."""
    for argv in (
        ["dmsetup", "table"],
        ["dmsetup", "status"],
        ["losetup", "-a"],
        ["cat", f"{k.state}/state.json"],
        ["ls", "-la", f"{k.state}/cow"],
        ["zfs", "list", "-H", "-t", "all", "-o", "name,createtxg"],
    ):
        run(argv, check=False)


CONTROL_MAGIC = b"snapkit-zfs-scrub-control"


def zfs_scrub_control() -> bool:
    """A throwaway pool on a tmpfs file holding 8 MiB of a marked pattern (no compression, so
    the marks are on the vdev as written), exported; 128 KiB from the first mark on the vdev
    overwritten -- file data only, so the pool still imports -- and imported again: the scrub
    ``check.fsck`` runs must find the damaged blocks."""
    vdev, pool = "/tmp/ctl-pool.img", "ctlpool"
    block = (CONTROL_MAGIC * 200)[:4096]
    with open(vdev, "wb") as f:
        f.truncate(96 << 20)
    try:
        run(["zpool", "create", "-f", "-m", "none", "-O", "compression=off", pool, vdev])
        run(["zfs", "create", "-o", "mountpoint=legacy", f"{pool}/d"])
        os.makedirs("/tmp/ctl-mnt", exist_ok=True)
        run(["mount", "-t", "zfs", f"{pool}/d", "/tmp/ctl-mnt"])
        with open("/tmp/ctl-mnt/data", "wb") as f:
            for _ in range(2048):
                f.write(block)
        run(["umount", "/tmp/ctl-mnt"])
        run(["zpool", "export", pool])
        with open(vdev, "r+b") as f:
            data = f.read()
            at = data.find(CONTROL_MAGIC)
            if at < 0:
                return False  # the pattern never reached the vdev: the control cannot run
            f.seek(at - at % 4096)
            f.write(b"\xa5" * (128 << 10))
        run(["zpool", "import", "-d", vdev, pool])
        return not check.fsck("zfs", f"{pool}/d").ok
    finally:
        run(["zpool", "destroy", "-f", pool], check=False)
        os.unlink(vdev)


def controls(k: Kind) -> dict[str, bool]:
    """Plant each fault the judge looks for and run its checker: True = caught."""
    caught: dict[str, bool] = {}
    run(["mount", "-t", k.fs, k.origin_dev, k.mnt])
    try:
        where = next(d for d in ("w", "w2") if os.path.exists(f"{k.mnt}/{d}/f1"))
        victim = f"{k.mnt}/{where}/f1"
        os.rename(victim, victim + ".away")
        caught["lost_ack"] = count_lost(f"{k.mnt}/{where}", 1) == 1
        os.rename(victim + ".away", victim)
        caught["lost_ack_clean"] = count_lost(f"{k.mnt}/{where}", 1) == 0
        digest = check.tree_hash(k.mnt)
        with open(f"{k.mnt}/planted", "wb") as f:
            f.write(b"x")
        caught["tree_differs"] = check.tree_hash(k.mnt) != digest
        os.unlink(f"{k.mnt}/planted")
        if not k.zfs:  # ZFS has no freeze (FIFREEZE: EOPNOTSUPP): nothing can leave it frozen
            run(["fsfreeze", "-f", k.mnt])
            caught["frozen"] = frozen([k.mnt]) == [k.mnt]
            run(["fsfreeze", "-u", k.mnt], check=False)
    finally:
        run(["umount", k.mnt])
    if k.zfs:  # no dm device to suspend, no superblock to zero: the scrub's own control
        caught["fsck"] = zfs_scrub_control()
        return caught
    if k.sibling:
        caught["sibling_changed"] = sibling.control(k)
    run(["dmsetup", "suspend", k.dm_name])
    caught["suspended"] = bool(suspended())
    run(["dmsetup", "resume", k.dm_name])
    with check.layer(k.origin_dev) as layer:
        fd = os.open(layer, os.O_WRONLY)
        try:
            os.pwrite(fd, bytes(4096), SUPERBLOCK_AT[k.fs])
            os.fsync(fd)
        finally:
            os.close(fd)
        caught["fsck"] = not check.fsck(k.fs, layer).ok
    return caught
