"""Power cuts, guest side (issue 6): build base disks once, then arm a cut and judge the last.

    guest.command("faults.main", "build", '[spec, ...]')
    guest.command("faults.main", "step", '{"judge": spec|null, "arm": spec|null}')

A *kind* (``kid``) is a filesystem, a method and a starting content: ``empty`` (a prepared dm
origin or an LVM LV, freshly made, for the create cuts) or ``snapped`` (the same with a
snapshot already taken, for the merge, discard and extend cuts) or, for the merge-sibling
cuts (issue 17), ``sibling``: the snapped base plus a second snapshot taken after it, 16 more
files and 2 MiB after that (``sibling.py`` says what the cut must leave of it). Its two disks
are named by serial, ``<kid>-o`` (the origin) and ``<kid>-k`` (an ext4 "keep" disk: snapkit's state
directory, so the state file and the COW files live on disk as on a real system, and the
ledgers). ``build`` makes one base per kind, once per run; every cut then boots on qcow2
overlays of it, so no cut pays for mkfs, pvcreate or the snapshot it merges.

Why ``step`` judges and arms in one boot: a boot under TCG costs seconds, and the judge of
one cut and the arming of the next need nothing from each other: different kinds, so
different disks, names, VGs and filesystem UUIDs (the host never chains two cuts of one
kind), and the judged kind is taken out of the kernel before the next is armed, because
snapkit adopts every snapkit device the kernel shows into the state file it is using.

``arm``: re-assemble (``snapkit recover``: the prepared origin, or the snapshot, as after any
reboot), start the ledger writer where the phase has a mounted origin (``writer.py``: each
file fsync'd, then its number appended to the ledger and fsync'd; niced, so the operation
under test gets the one vCPU first -- it still writes all along), and launch the operation in
the background with flow's test hook pausing it before plan step N (``SNAPKIT_TEST_PAUSE_AT``).
The host polls ``/tmp/op-<kid>.err`` for the pause line, or waits a seeded delay, and SIGKILLs
QEMU. The judge is in ``judge.py``. Prints one JSON object. Standard library only.

A stacked kind (``dm+crypt``, ``lvm+crypt``: ``kind.py``) builds the same base with a plain
crypt mapping between the base and the filesystem, and every boot of it first does what a
user does at boot (``kind.boot``): open the mapping again with the same key, and recover.
"""

from __future__ import annotations

import sys

sys.path.insert(0, "/src")

import json
import os
import secrets
import subprocess
import time
import traceback
from typing import Any

from vmtests.guest import check, command, zfsdisk
from vmtests.guest.faults.kind import (
    MERGES,
    Kind,
    acked,
    attach,
    boot,
    durable,
    open_crypt,
    snapkit,
    teardown,
)
from vmtests.guest.proc import log, run
from vmtests.guest.writer import pattern

MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}
BASE_FILES, LATER_FILES = 24, 40  # files before the snapshot, and after it (the COW's content)
COW_SIZE = "32M"
BALLAST_MIB = 12  # written after the snapshot: a COW the kernel's merge takes a while to copy
SIBLING_FILES, SIBLING_BALLAST_MIB = 16, 2  # written after the sibling: chunks it already holds


def write_files(directory: str, ledger: str, first: int, last: int) -> None:
    """The writer's protocol, synchronously: file fsync'd, directory fsync'd, then its number
    in the ledger, fsync'd. Numbers continue a ledger, so no acknowledged file is rewritten."""
    os.makedirs(directory, exist_ok=True)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    lfd = os.open(ledger, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for n in range(first, last + 1):
            fd = os.open(f"{directory}/f{n}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, pattern(n))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.fsync(dfd)
            os.write(lfd, f"{n}\n".encode())
            os.fsync(lfd)
    finally:
        os.close(lfd)
        os.close(dfd)


def ballast(path: str, mib: int) -> None:
    """``mib`` MiB in one fsync'd file: every chunk it lands on gets an exception."""
    block = bytes(range(256)) * 4096  # 1 MiB
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


def create_argv(k: Kind, name: str) -> list[str]:
    """``snapshot create`` of the kind's origin as ``name``, the base's and the cuts' alike."""
    return [
        "snapshot",
        "create",
        k.mnt,
        "--name",
        name,
        "--method",
        k.base_method,
        "--cow-size",
        COW_SIZE,
    ]


def create(k: Kind, name: str) -> None:
    snapkit(k, *create_argv(k, name))


def build(k: Kind) -> dict[str, Any]:
    """One base: keep disk, origin (prepared dm device or LV), filesystem; when snapped, 24
    acknowledged files, the snapshot, 40 more files and 12 MiB of ballast, and the snapshot's
    tree digest; with a sibling, then the sibling, 16 more files and 2 MiB, and its digest and
    acknowledged count too (the ballast it has no copy of is what merging the first rewrites,
    so the kernel must copy it into the sibling first). Ends
    with the kind's devices taken down as a shutdown would: the state file still records the
    snapshot, so every cut starts with a reboot's ``snapkit recover``."""
    attach(k, fresh=True)
    if k.zfs:
        run(["zpool", "create", "-f", "-m", "none", k.pool, zfsdisk.vdev(k.origin_disk)])
        run(["zfs", "create", "-o", "mountpoint=legacy", k.origin_dev])
    elif k.base_method == "lvm":
        run(["pvcreate", "-q", "-y", k.origin_disk])
        run(["vgcreate", "-q", k.vg, k.origin_disk])
        run(["lvcreate", "-q", "-y", "-L", "160M", "-n", "lv0", k.vg])
    else:
        snapkit(k, "device", "prepare", k.origin_disk, "--name", k.prepared)
    if k.crypt:  # the harness's key, kept where every later boot finds it
        durable(k.key_file, secrets.token_hex(32))
        open_crypt(k)
    if not k.zfs:
        run([*MKFS[k.fs], k.origin_dev])
    run(["mount", "-t", k.fs, k.origin_dev, k.mnt])
    durable(k.ledger, "")
    durable(k.ledger2, "")
    if k.snapped:
        write_files(f"{k.mnt}/w", k.ledger, 1, BASE_FILES)
        durable(k.before, str(BASE_FILES))
        create(k, k.name)
        write_files(f"{k.mnt}/w", k.ledger, BASE_FILES + 1, BASE_FILES + LATER_FILES)
        ballast(f"{k.mnt}/ballast", BALLAST_MIB)
    if k.sibling:  # the sibling b: its merge-sibling cuts merge a while b exists (sibling.py)
        durable(k.sibling_before, str(BASE_FILES + LATER_FILES))
        create(k, k.sibling_name)
        last = BASE_FILES + LATER_FILES + SIBLING_FILES
        write_files(f"{k.mnt}/w", k.ledger, BASE_FILES + LATER_FILES + 1, last)
        ballast(f"{k.mnt}/ballast2", SIBLING_BALLAST_MIB)
    run(["umount", k.mnt])
    digests = [(k.name, k.expected)] if k.snapped else []
    digests += [(k.sibling_name, k.sibling_expected)] if k.sibling else []
    for name, where in digests:
        snapkit(k, "snapshot", "mount", name, k.snap_mnt)
        durable(where, check.tree_hash(k.snap_mnt))
        run(["umount", k.snap_mnt])
    teardown(k)  # a clean shutdown: and the next kind built in this boot never sees this one
    return {"kid": k.kid, "built": True}


def arm(k: Kind, spec: dict[str, Any]) -> dict[str, Any]:
    phase = spec["phase"]
    attach(k)
    if k.crypt:  # open the crypt mapping and recover, in a user's order (kind.boot)
        for rec in boot(k):
            if rec.returncode != 0:
                raise RuntimeError(f"recover exited {rec.returncode}: {rec.stderr[-800:]}")
    elif k.method != "lvm":
        snapkit(k, "recover")  # the prepared origin (and the snapshot), as after any reboot
    if phase not in MERGES:  # a merge needs the origin unmounted; the others run under writes
        run(["mount", "-t", k.fs, k.origin_dev, k.mnt])
        subprocess.Popen(
            ["nice", "-n", "10", *command("writer", "write"), f"{k.mnt}/w2", k.ledger2, k.stop],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives this script: the agent ends its process group
        )
        deadline = time.monotonic() + 120
        while acked(k.ledger2) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    if phase == "create":
        durable(k.before, str(acked(k.ledger2)))
    op = {
        "create": create_argv(k, k.name),
        "merge": ["snapshot", "merge", k.name, "--wait"],
        "merge-sibling": ["snapshot", "merge", k.name, "--wait"],  # while the sibling exists
        "discard": ["snapshot", "discard", k.name],
        "extend": [
            "snapshot",
            "watch",
            k.name,
            "--extend-at",
            "0.01",
            "--extend-by",
            "8M",
            "--once",
        ],
    }[phase]
    env = dict(k.env)
    if spec.get("step"):
        env["SNAPKIT_TEST_PAUSE_AT"] = f"{spec.get('plan', 1)}:{spec['step']}"
    else:  # the host starts a seeded delay when the operation's command is logged
        env["SNAPKIT_DEBUG"] = "1"
    err = open(k.op_err, "wb")  # noqa: SIM115 - handed to the child, which outlives us
    # the host may wait for its end (a cut after a create that returned): sh says it exited
    wrapped = ["sh", "-c", 'snapkit "$@"; echo "snapkit exited $?" >&2', "sh", *op]
    subprocess.Popen(
        wrapped, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True
    )
    log(f"armed {k.kid} {phase}: snapkit {' '.join(op)}")
    return {"armed": True, "acked_at_launch": acked(k.ledger2)}


def _teardown(k: Kind) -> dict[str, Any]:
    teardown(k)
    return {}


def _guarded(what: str, fn: Any, *args: Any) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        return {**fn(*args), "seconds": round(time.monotonic() - t0, 2)}
    except BaseException as exc:  # reported to the host: a step never crashes
        log(traceback.format_exc())
        return {
            "ok": False,
            "error": f"{what}: {type(exc).__name__}: {exc}"[-1500:],
            "problems": [f"{what} crashed: {type(exc).__name__}: {exc}"[-1500:]],
        }


def main(argv: list[str]) -> int:
    from vmtests.guest.faults import judge as faults_judge

    # mkfs.xfs refuses filesystems under 300 MiB unless it is told it runs under a test suite
    os.environ.update(TEST_DIR="/tmp", TEST_DEV="/dev/null", QA_CHECK_FS="1")
    if argv[0] == "build":
        doc: Any = [_guarded("build", build, Kind.of(s)) for s in json.loads(argv[1])]
    else:
        todo = json.loads(argv[1])
        doc = {}
        if todo.get("judge"):
            spec = todo["judge"]
            doc["judged"] = _guarded("judge", faults_judge.judge, Kind.of(spec), spec)
            if todo.get("arm"):
                _guarded("teardown", _teardown, Kind.of(spec))
        if todo.get("arm"):
            spec = todo["arm"]
            doc["armed"] = _guarded("arm", arm, Kind.of(spec), spec)
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
