"""One campaign scenario, start to finish, in ONE guest process.

Python starts in ~0.3 s under TCG with -I -S but snapkit's own start costs more, so everything
that is not the code under test runs here: storage setup, mkfs, the workloads (threads, plus
fio), the snapshot command between two readings of CLOCK_MONOTONIC, fsck, the throwaway mount,
the ledger verification, fio's verify pass, the merge and the tree comparison. It prints one
JSON object on stdout and writes its artifacts as a tar onto the disk with serial ``out``.

    guest.command("campaign.scenario", '{"id": ..., "fs": ..., ...}')   # on the host
"""

from __future__ import annotations

import sys

sys.path.insert(0, "/src")

import gzip
import io
import json
import os
import shutil
import tarfile
import time
from typing import Any

from snapkit.host.fs import FREEZE_INCONSISTENT
from vmtests.guest import check
from vmtests.guest.campaign import ledger, sqlitedb, targets
from vmtests.guest.campaign.workloads import COMPONENTS, Workload, longest_stall, verify_snapshot
from vmtests.guest.proc import LOG, log, run
from vmtests.guest.refusal import CREATE_TRIES, PROBE_PAUSE_S, PROBE_TRIES, Rule

PROBE_WORKLOADS = ("desktop",)  # scenarios.PROBES: rows that measure a refusal's rate

OUT_DISK = "/dev/vmtest/out"
LEDGER = "/tmp/ledger.jsonl"
SNAP_MNT = "/mnt/snapshot"


def take(
    spec: dict[str, Any], origin: targets.Origin, rule: Rule, res: dict[str, Any]
) -> targets.Snapshot:
    """``targets.take``, tried again (up to ``CREATE_TRIES``) when the method refuses to begin
    as it documents (refusal.Rule.busy); any other failure, or the last, propagates.

    A probe row (the ``desktop`` workload) tries ``PROBE_TRIES`` times, ``PROBE_PAUSE_S``
    apart, and keeps the count in ``res["busy"]``: how often a busy desktop refuses."""
    probe = spec.get("workload") in PROBE_WORKLOADS
    tries, pause = (PROBE_TRIES, PROBE_PAUSE_S) if probe else (CREATE_TRIES, 0.2)
    for n in range(1, tries + 1):
        try:
            snap = targets.take(spec, origin)
            if probe:
                res["busy"] = {"tries": n, "refused": n - 1}
            return snap
        except Exception as exc:
            if not rule.busy(str(exc)):
                raise
            res["create_refused"] = n
            if probe:
                res["busy"] = {"tries": n, "refused": n}
            if n == tries:
                raise
            log(f"create refused as documented (try {n}): {exc}")
            time.sleep(pause)
    raise AssertionError("unreachable")


def _said(exc: BaseException, words: str) -> str:
    """snapkit's own error line in a failed command's message (which starts with the argv),
    the one holding ``words``: what the report quotes for a documented refusal."""
    lines = str(exc).strip().splitlines() or [""]
    line = next((ln for ln in lines if words in ln), lines[-1])
    start = line.find("snapkit: error:")
    return line[start if start >= 0 else 0 :].strip()[:400]


def attempt(spec: dict[str, Any], origin: targets.Origin, seed: int, res: dict[str, Any]) -> None:
    fs, control = spec["fs"], spec.get("control") or ""
    checks: dict[str, bool | None] = res["checks"]
    targets.make_fs(origin)
    if os.path.exists(LEDGER):
        os.unlink(LEDGER)
    led = ledger.Ledger(LEDGER)
    # remount-ro refuses while any file is open for writing (by design), so its writers work
    # on a mostly idle filesystem: the same operations, further apart.
    pace = 0.3 if spec["method"] == "remount-ro" else ledger.PACE_S
    rule = Rule(spec["method"])
    work = Workload(COMPONENTS[spec["workload"]], origin.mountpoint, led, seed, pace, rule)
    work.start()
    time.sleep(spec.get("warmup", 1.0))
    res["errors"].append(work.settle())
    begin = time.monotonic()
    led.mark("snapshot-begin", begin)
    try:
        snap = take(spec, origin, rule, res)
        checks["snapshot"] = True
    except Exception as exc:
        snap = None
        busy = res.get("busy") or {}
        if busy and busy["refused"] == busy["tries"]:  # a probe refused every time, as documented
            res["refused_create"] = _said(exc, "busy")
        elif fs in FREEZE_INCONSISTENT and f"would freeze {fs}" in str(exc):
            # snapkit's documented refusal to freeze this filesystem (host/fs.freeze_refusal):
            # the row's outcome, ``refused``, not a failure
            res["refused_create"] = _said(exc, f"would freeze {fs}")
        else:
            checks["snapshot"] = False
            res["errors"].append(f"snapshot: {exc}")
    end = time.monotonic()
    led.mark("snapshot-end", end)
    time.sleep(spec.get("tail", 0.5))
    res["errors"].append(work.finish())
    led.close()
    ops = ledger.load(LEDGER)
    res.update(
        window_ms=round((end - begin) * 1000, 1),
        ops=len(ops),
        refused=ledger.refusals(LEDGER),
        freeze_window_ms=longest_stall(ops, begin, end),
    )
    if snap is not None:
        res["snapshot_info"] = snap.info
        res["snapshot_device"] = snap.device
    if control == "corrupt" and snap is not None:
        res["corrupted"] = targets.corrupt(snap.device, ops, begin, seed)
    run(["umount", origin.mountpoint])
    if snap is None:
        return
    if control == "drop-wal":
        res["corrupted"] = sqlitedb.drop_wal(snap.device, fs, SNAP_MNT)
    if fs in check.EXT_JOURNALLED:  # "always clean": a frozen ext3/4 leaves no journal to recover
        checks["clean"] = not check.needs_recovery(snap.device)
    fsck = check.fsck(fs, snap.device)
    checks["fsck"] = fsck.ok
    if fs == "xfs":  # claim 4's "the same support": is the log clean before any mount? A fact,
        # not a check: a frozen XFS leaves a log to replay by design (check.xfs_log_only)
        res["log_clean"] = True if fsck.ok else (False if check.xfs_log_only(fsck) else None)
    res["fsck_output"] = fsck.out[-6000:]
    try:
        with check.layer(snap.device) as layer:
            with check.mounted(fs, layer, SNAP_MNT, snap.subvol) as root:
                checks["mount"] = True
                verify_snapshot(spec, root, ops, begin, end, seed, res)
            if check.xfs_log_only(fsck):
                again = check.fsck(fs, layer)  # the mount replayed the log into the layer
                checks["fsck"] = again.ok
                res["fsck_note"] = "xfs log replayed on the throwaway layer, then xfs_repair -n"
                res["fsck_output"] += "\n--- after log replay ---\n" + again.out[-6000:]
    except Exception as exc:
        checks.setdefault("mount", False)
        res["errors"].append(f"oracle: {type(exc).__name__}: {exc}")
        return
    keep = spec.get("keep_image", True) and fs != "zfs"  # a ZFS snapshot is no device file
    if bool(failed(checks)) != bool(control) and keep:
        save_image(snap.device)  # before a merge consumes the snapshot
    if snap.mergeable and spec.get("merge", True):
        try:
            targets.merge(origin)
            origin.mount()
            res["tree_merged"] = check.tree_hash(origin.mountpoint)
            run(["umount", origin.mountpoint])
            checks["merge"] = res["tree_merged"] == res["tree_snapshot"]
        except Exception as exc:
            checks["merge"] = False
            res["errors"].append(f"merge: {exc}")


IMAGE = "/tmp/snapshot.img.gz"


def save_image(device: str) -> None:
    log(f"saving {device} compressed for the report")
    with open(device, "rb") as src, gzip.open(IMAGE, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def failed(checks: dict[str, bool | None]) -> list[str]:
    return [name for name, ok in checks.items() if ok is False]


def write_artifacts(res: dict[str, Any], keep_image: bool, out: str = OUT_DISK) -> None:
    if not os.path.exists(out):
        return
    members = {
        "result.json": json.dumps(res, indent=1).encode(),
        "guest.log": "\n".join(LOG).encode(),
    }
    for name in ("fsck_output", "fio_output"):
        members[name.replace("_output", ".txt")] = str(res.get(name, "")).encode()
    with open(out, "wb") as disk, tarfile.open(fileobj=disk, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if os.path.exists(LEDGER):
            tar.add(LEDGER, arcname="ledger.jsonl")
        if keep_image and os.path.exists(IMAGE):
            tar.add(IMAGE, arcname="snapshot.img.gz")


def attempts(spec: dict[str, Any], control: str, res: dict[str, Any]) -> None:
    """A single snapshot's scenario: once, or a control until it is caught."""
    origin = targets.prepare(
        spec["method"], control, spec["fs"], spec.get("size_mib", 160), spec.get("stack", "")
    )
    for n in range(spec.get("attempts", 1)):
        res.update(attempts=n + 1, checks={}, counts={})
        attempt(spec, origin, spec["seed"] + n, res)
        if not control or failed(res["checks"]):
            break
        log(f"control not caught on attempt {n + 1}: trying again")


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    # mkfs.xfs refuses filesystems under 300 MiB unless it is told it runs under a test suite.
    os.environ.update(TEST_DIR="/tmp", TEST_DEV="/dev/null", QA_CHECK_FS="1")
    control = spec.get("control") or ""
    res: dict[str, Any] = {"id": spec["id"], "errors": [], "attempts": 0, "checks": {}}
    try:
        missing = "" if spec.get("group") else targets.missing_fs(spec["fs"])
        if missing:  # the kernel cannot run this row at all: say why, measure nothing
            res["unsupported"] = missing
            print(json.dumps(res), flush=True)
            return 0
        if spec.get("group"):  # a snapshot group: its own runner, the same result's shape
            from vmtests.guest.campaign import group

            res.update(attempts=1)
            group.attempt(spec, spec["seed"], res)
        else:
            attempts(spec, control, res)
    except Exception as exc:
        res["errors"].append(f"setup: {type(exc).__name__}: {exc}")
    res["errors"] = [e for e in res["errors"] if e]
    res["caught_by"] = failed(res["checks"])
    keep = bool(res["caught_by"] or res["errors"]) != bool(control)
    write_artifacts(res, keep, spec.get("out_disk", OUT_DISK))
    res.pop("fsck_output", None)
    res.pop("fio_output", None)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
