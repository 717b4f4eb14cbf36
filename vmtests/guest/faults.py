"""Power cuts, guest side (issue 6, item 1): one boot arms the cut, the next boot judges it.

    python3 -I -S /src/vmtests/guest/faults.py arm   '{"fs":..,"method":..,"phase":..,"step":..}'
    python3 -I -S /src/vmtests/guest/faults.py judge '{...same spec...}'

Disks survive the cut (they are raw files on the host): ``/dev/vmtest/disk0`` holds the origin
(a prepared dm device, or an LVM LV), ``/dev/vmtest/disk1`` is an ext4 "keep" disk with
snapkit's state directory (so the state file and the COW files live where a real system keeps
them, on disk) and the ledger. ``arm`` sets up, starts the ledger writer (``writer.py``: each
file fsync'd, then its number appended and fsync'd), and launches the operation under test in
the background with flow's test hook pausing it before plan step N (``SNAPKIT_TEST_PAUSE_AT``);
the host polls for the pause line (``/tmp/op.err``) and kills QEMU. A step of 0 means no pause:
the host cuts after a seeded delay instead, wherever the operation (or the kernel's merge) is.

``judge`` runs after the reboot: ``snapkit recover``, then the oracle -- origin mounted (the
journal replays), every acknowledged file intact, unmounted, fsck clean; a surviving snapshot
active, fsck clean, and holding every file acknowledged before the create began; a merge
finished with the origin equal to the snapshot's tree; no dm device left suspended.
Prints one JSON object. Standard library only.
"""

from __future__ import annotations

import sys

sys.path.insert(0, "/src")

import json
import os
import subprocess
import time
from typing import Any

from vmtests.guest import check
from vmtests.guest.proc import log, run
from vmtests.guest.writer import pattern

KEEP = "/keep"
STATE = f"{KEEP}/state"
LEDGER = f"{KEEP}/ledger"
ENV = {**os.environ, "SNAPKIT_STATE_DIR": STATE, "DM_DISABLE_UDEV": "1"}
ORIGIN_DISK, KEEP_DISK = "/dev/vmtest/disk0", "/dev/vmtest/disk1"
MNT, SNAP_MNT = "/mnt/o", "/mnt/s"
MKFS = {"ext4": ["mkfs.ext4", "-q", "-F"], "xfs": ["mkfs.xfs", "-q", "-f"],
        "btrfs": ["mkfs.btrfs", "-q", "-f"]}  # fmt: skip
NAME = "s1"


def snapkit(*args: str, check_ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["snapkit", *args], capture_output=True, text=True, env=ENV, check=False)
    log(f"$ snapkit {' '.join(args)} -> {proc.returncode} {proc.stderr.strip()[-300:]}")
    if check_ok and proc.returncode != 0:
        raise SystemExit(f"snapkit {' '.join(args)}: {proc.stderr}")
    return proc


def origin_dev(method: str) -> str:
    return "/dev/mapper/data" if method == "dm" else "/dev/vg0/lv0"


def durable(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def acked() -> int:
    with open(LEDGER, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip().isdigit())


def arm(spec: dict[str, Any]) -> dict[str, Any]:
    fs, method, phase = spec["fs"], spec["method"], spec["phase"]
    run(["mkfs.ext4", "-q", "-F", KEEP_DISK])
    os.makedirs(KEEP, exist_ok=True)
    run(["mount", KEEP_DISK, KEEP])
    os.makedirs(STATE, exist_ok=True)
    for d in (MNT, SNAP_MNT):
        os.makedirs(d, exist_ok=True)
    run(["modprobe", fs], check=False)
    if method == "dm":
        snapkit("device", "prepare", ORIGIN_DISK, "--name", "data")
    else:
        run(["pvcreate", "-q", "-y", ORIGIN_DISK])
        run(["vgcreate", "-q", "vg0", ORIGIN_DISK])
        run(["lvcreate", "-q", "-y", "-L", "160M", "-n", "lv0", "vg0"])
    run([*MKFS[fs], origin_dev(method)])
    run(["mount", "-t", fs, origin_dev(method), MNT])
    durable(LEDGER, "")
    subprocess.Popen(
        ["python3", "-I", "-S", "/src/vmtests/guest/writer.py", "write", f"{MNT}/w", LEDGER,
         "/tmp/stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # outlives this script: the agent ends its process group
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while acked() < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    create = ["snapshot", "create", MNT, "--name", NAME, "--method", method,
              "--cow-size", "32M"]  # fmt: skip
    env = dict(ENV)
    if spec.get("step"):
        env["SNAPKIT_TEST_PAUSE_AT"] = f"{spec.get('plan', 1)}:{spec['step']}"
    if phase == "merge":
        durable(f"{KEEP}/before", str(acked()))
        snapkit(*create)
        open("/tmp/stop", "w").close()
        time.sleep(0.5)
        snapkit("snapshot", "mount", NAME, SNAP_MNT)
        durable(f"{KEEP}/expected", check.tree_hash(SNAP_MNT))
        run(["umount", SNAP_MNT])
        run(["umount", MNT])
        op = ["snapshot", "merge", NAME, "--wait"]
    else:
        durable(f"{KEEP}/before", str(acked()))
        op = create
    err = open("/tmp/op.err", "wb")  # noqa: SIM115 - handed to the child, which outlives us
    subprocess.Popen(["snapkit", *op], stdout=subprocess.DEVNULL, stderr=err, env=env,
                     start_new_session=True)  # fmt: skip
    return {"armed": True, "acked_before": acked()}


def suspended() -> list[str]:
    out = []
    for kname in os.listdir("/sys/block"):
        path = f"/sys/block/{kname}/dm/suspended"
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                if f.read().strip() == "1":
                    out.append(kname)
    return out


def count_lost(root: str, upto: int) -> int:
    lost = 0
    for n in range(1, upto + 1):
        try:
            with open(f"{root}/w/f{n}", "rb") as f:
                ok = f.read() == pattern(n)
        except OSError:
            ok = False
        lost += not ok
    return lost


def judge(spec: dict[str, Any]) -> dict[str, Any]:
    fs, method, phase = spec["fs"], spec["method"], spec["phase"]
    out: dict[str, Any] = {"problems": []}
    problems: list[str] = out["problems"]
    for d in (KEEP, MNT, SNAP_MNT):  # the root is a tmpfs overlay: nothing of boot 1 is left
        os.makedirs(d, exist_ok=True)
    run(["mount", KEEP_DISK, KEEP])
    run(["modprobe", fs], check=False)
    if method != "dm":
        run(["vgchange", "-ay", "vg0"], check=False)  # what the boot's LVM activation does
    rec = snapkit("recover", "--json", check_ok=False)
    out["recover_exit"] = rec.returncode
    if rec.returncode != 0:
        problems.append(f"recover exited {rec.returncode}: {rec.stderr.strip()}")
    out["recover"] = json.loads(rec.stdout) if rec.returncode == 0 else None
    listed = snapkit("snapshot", "list", "--json", check_ok=False)
    snaps = {s["name"]: s for s in json.loads(listed.stdout or "[]")}
    out["snapshot"] = snaps.get(NAME, {}).get("state", "absent")
    dev = origin_dev(method)
    with open(LEDGER, encoding="utf-8") as f:
        total = sum(1 for line in f if line.strip().isdigit())
    with open(f"{KEEP}/before", encoding="utf-8") as f:
        before = int(f.read() or 0)
    run(["mount", "-t", fs, dev, MNT])  # replays the journal, as the next boot would
    # A merge cut before the kernel started it leaves the snapshot as it was (re-assembled):
    # the origin must then hold every acked write; once merged, it must equal the snapshot.
    merged = phase == "merge" and out["snapshot"] == "absent"
    upto = before if merged else total
    out["acked_checked"] = upto
    out["acked_lost"] = count_lost(MNT, upto)
    if merged:
        with open(f"{KEEP}/expected", encoding="utf-8") as f:
            out["merge_equal"] = check.tree_hash(MNT) == f.read()
        if not out["merge_equal"]:
            problems.append("after the merge the origin differs from the snapshot")
    run(["umount", MNT])
    result = check.fsck(fs, dev)
    out["fsck_origin"] = result.ok
    if not result.ok:
        problems.append(f"fsck of the origin: {result.out[-300:]}")
    if out["acked_lost"]:
        problems.append(f"{out['acked_lost']} acknowledged writes lost from the origin")
    if out["snapshot"] not in ("absent", "active"):
        problems.append(f"snapshot {NAME} is {out['snapshot']} after recover")
    if out["snapshot"] == "active":
        snap = snaps[NAME]["device"]
        result = check.fsck(fs, snap)
        fsck_ok = result.ok or check.xfs_log_only(result)
        with check.layer(snap) as layer, check.mounted(fs, layer, SNAP_MNT):
            out["snapshot_lost"] = count_lost(SNAP_MNT, before)
            if phase == "merge":
                with open(f"{KEEP}/expected", encoding="utf-8") as f:
                    out["snapshot_equal"] = check.tree_hash(SNAP_MNT) == f.read()
                if not out["snapshot_equal"]:
                    problems.append("the merge did not start, yet the snapshot changed")
        out["fsck_snapshot"] = fsck_ok
        if not fsck_ok:
            problems.append(f"fsck of the snapshot: {result.out[-300:]}")
        if out["snapshot_lost"]:
            problems.append(f"the snapshot lacks {out['snapshot_lost']} files acked before it")
    out["suspended"] = suspended()
    if out["suspended"]:
        problems.append(f"devices left suspended: {out['suspended']}")
    out["ok"] = not problems
    return out


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    doc = arm(spec) if argv[0] == "arm" else judge(spec)
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
