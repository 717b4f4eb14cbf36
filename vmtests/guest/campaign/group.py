"""One campaign scenario of a snapshot *group* (issue 15), in the scenario's one guest process.

Each member is an origin of its own (a disk ``member<k>``: a prepared device for dm and
dm-direct, an LV of one VG over all of them for lvm and freeze-lvm), with the scenario's
workload and its own ledger, so every member passes the single-snapshot oracle on its own. A
cross-volume writer (vmtests/guest/crosswriter.py) writes record n on member 0, then on 1,
then on 2, each durable before the next: the group's own check is that no snapshot holds a
record its predecessor's snapshot lacks (``cross``), and that every record acknowledged
before the create is on every member. Then the group merges back, and each member's tree
must be its snapshot's.

The checks are the single scenario's, each true only if it holds on every member; the
counts are summed over the members.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from vmtests.guest import check, crosswriter
from vmtests.guest.campaign import ledger, targets
from vmtests.guest.campaign.workloads import COMPONENTS, Workload, longest_stall, verify_snapshot
from vmtests.guest.proc import log, run
from vmtests.guest.refusal import Rule

NAME = "g"
CROSS_LEDGER = Path("/tmp/cross.ledger")
CROSS_STOP = Path("/tmp/cross.stop")
CROSS_DIR = "cross"


def member_disk(k: int) -> str:
    return f"/dev/vmtest/member{k}"


def prepare(method: str, filesystems: list[str], size_mib: int) -> list[targets.Origin]:
    """One origin per member, as the method expects it, mounted at /mnt/m<k>."""
    disks = [member_disk(k) for k in range(len(filesystems))]
    for disk in disks:
        run(["wipefs", "-a", "-q", disk], check=False)
    origins = []
    if method in ("lvm", "freeze-lvm"):
        run(["pvcreate", "-q", "-ff", "-y", *disks])
        run(["vgcreate", "-q", "vg", *disks])
    for k, (disk, fs) in enumerate(zip(disks, filesystems, strict=True)):
        if method in ("lvm", "freeze-lvm"):
            run(["lvcreate", "-q", "-y", "-L", f"{size_mib}M", "-n", f"o{k}", "vg", disk])
            if method == "freeze-lvm":
                run(["lvcreate", "-q", "-y", "-L", f"{size_mib}M", "-n", f"c{k}", "vg", disk])
            device = f"/dev/vg/o{k}"
        else:
            run(["snapkit", "device", "prepare", disk, "--name", f"o{k}"])
            device = f"/dev/mapper/o{k}"
        origins.append(targets.Origin(device, fs, mountpoint=f"/mnt/m{k}"))
    return origins


def create(spec: dict[str, Any], origins: list[targets.Origin]) -> list[str]:
    """``snapkit snapshot create MP... --name g``: the members' snapshot devices, in order."""
    method = spec["method"]
    argv = ["snapkit", "snapshot", "create", *(o.mountpoint for o in origins), "--name", NAME]
    argv += ["--method", spec["snapkit_method"], "--max-freeze", "120", "--json"]
    if method == "freeze-lvm":  # the user's command copies each member onto its copy LV
        copies = "; ".join(
            f'dd if="${k + 1}" of=/dev/vg/c{k} bs=1M iflag=direct oflag=direct status=none'
            for k in range(len(origins))
        )
        argv += ["--command", f"set -e; set -- $SNAPKIT_DEVICES; {copies}"]
    else:
        argv += ["--cow-size", f"{spec.get('cow_mib', 64)}M"]
    if method in ("dm", "dm-direct"):
        argv += ["--cow-dir", "/tmp"]
    info = json.loads(run(argv).out)
    if method == "freeze-lvm":
        return [f"/dev/vg/c{k}" for k in range(len(origins))]
    return [str(m["device"]) for m in info["members"]]


def attempt(spec: dict[str, Any], seed: int, res: dict[str, Any]) -> None:
    checks: dict[str, bool | None] = res["checks"]
    filesystems = spec["group"].split("+")
    origins = prepare(spec["method"], filesystems, spec.get("size_mib", 160))
    rule = Rule(spec["method"])
    works, ledgers = [], []
    for k, origin in enumerate(origins):
        targets.make_fs(origin)
        path = f"/tmp/ledger-{k}.jsonl"
        led = ledger.Ledger(path)
        ledgers.append((path, led))
        names = COMPONENTS[spec["workload"]]
        works.append(Workload(names, origin.mountpoint, led, seed + k, ledger.PACE_S, rule))
    for work in works:
        work.start()
    dirs = [Path(o.mountpoint) / CROSS_DIR for o in origins]
    cross = threading.Thread(target=crosswriter.write, args=(dirs, CROSS_LEDGER, CROSS_STOP))
    cross.start()
    time.sleep(spec.get("warmup", 1.0))
    acknowledged = len(CROSS_LEDGER.read_text().split())
    begin = time.monotonic()
    for _, led in ledgers:
        led.mark("snapshot-begin", begin)
    try:
        devices = create(spec, origins)
        checks["snapshot"] = True
    except Exception as exc:
        devices, checks["snapshot"] = [], False
        res["errors"].append(f"snapshot: {exc}")
    end = time.monotonic()
    for _, led in ledgers:
        led.mark("snapshot-end", end)
    time.sleep(spec.get("tail", 0.5))
    CROSS_STOP.touch()
    cross.join(120)
    res["errors"] += [work.finish() for work in works]
    stalls: list[float] = []
    counts: dict[str, Any] = {}
    members: list[dict[str, Any]] = []
    for _, led in ledgers:
        led.close()
    opss = [ledger.load(path) for path, _ in ledgers]
    for ops in opss:
        stalls.append(longest_stall(ops, begin, end))
    res.update(
        window_ms=round((end - begin) * 1000, 1),
        ops=sum(len(ops) for ops in opss),
        refused=sum(ledger.refusals(path) for path, _ in ledgers),
        freeze_window_ms=max(stalls, default=0.0),
        member_stalls_ms=stalls,
        cross_acknowledged=acknowledged,
    )
    for origin in origins:
        run(["umount", origin.mountpoint])
    if not devices:
        return
    res["snapshot_devices"] = devices
    found: list[set[int]] = []
    for k, (origin, device, ops) in enumerate(zip(origins, devices, opss, strict=True)):
        one: dict[str, Any] = {"checks": {}, "errors": []}
        if origin.fs == "ext4":
            one["checks"]["clean"] = not check.needs_recovery(device)
        fsck = check.fsck(origin.fs, device)
        one["checks"]["fsck"] = fsck.ok
        try:
            with check.layer(device) as layer:
                with check.mounted(origin.fs, layer, f"/mnt/snapshot{k}") as root:
                    one["checks"]["mount"] = True
                    verify_snapshot(spec, root, ops, begin, end, seed + k, one)
                    found.append(crosswriter.present(Path(root) / CROSS_DIR))
                if check.xfs_log_only(fsck):
                    one["checks"]["fsck"] = check.fsck(origin.fs, layer).ok
        except Exception as exc:
            one["checks"].setdefault("mount", False)
            res["errors"].append(f"oracle {origin.mountpoint}: {type(exc).__name__}: {exc}")
        members.append(one)
        for key, value in one.get("counts", {}).items():  # numbers summed, examples joined
            counts[key] = counts.get(key, [] if isinstance(value, list) else 0) + value
    res["counts"] = counts
    res["members"] = [{"checks": m["checks"], "counts": m.get("counts", {})} for m in members]
    for name in ("clean", "fsck", "mount", "ledger"):
        seen = [m["checks"][name] for m in members if name in m["checks"]]
        if seen:
            checks[name] = all(seen)
    if len(found) == len(origins):
        judged = crosswriter.judge(found, acknowledged)
        res["cross"] = judged
        checks["cross"] = not judged["missing"] and not judged["broken"]
    if spec["method"] == "freeze-lvm" or not spec.get("merge", True):
        run(["snapkit", "snapshot", "discard", NAME])  # the copies are the user's
        return
    try:
        run(["snapkit", "snapshot", "merge", NAME, "--wait"], timeout=600)
        same = True
        for origin, member in zip(origins, members, strict=True):
            origin.mount()
            same = same and check.tree_hash(origin.mountpoint) == member.get("tree_snapshot")
            run(["umount", origin.mountpoint])
        checks["merge"] = same
    except Exception as exc:
        checks["merge"] = False
        res["errors"].append(f"merge: {exc}")
    log(f"group {NAME}: {len(origins)} members, cross {res.get('cross')}")


__all__ = ["attempt", "member_disk"]
