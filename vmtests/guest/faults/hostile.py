"""Hostile and bad input for every snapkit verb, in one guest process (issue 6, item 4).

    guest.command("faults.hostile"[, "--control"])

Sets up what the cases need -- a plain loop device with ext4 mounted, a prepared dm origin with
a dm snapshot that is mounted, a second prepared origin (unmounted) whose snapshot is made
invalid by overflowing its COW, and an LVM LV with an lvm snapshot -- then, for each case, takes
a fingerprint of everything a snapkit command could change (``dmsetup table`` and ``info``,
``losetup -a``, the sorted mount table, the state file, the COW directory), runs the case, and
checks: exit code 1 or 2, exactly one line on stderr, that line naming the problem (a word
given per case) and saying how to fix it (a hint), and the fingerprint byte-identical after.

Why one process: under TCG a round trip from the host costs little, but every case in its own
host call would still re-read the fingerprint over the channel; here each case costs one
snapkit start. ``--control`` adds negative controls (a valid create, a case expecting the wrong
word) that MUST be reported as not refused cleanly, proving the checker can fail.

``--zfs`` (a guest whose kernel has ZFS's module) adds the ZFS stage -- a pool on a sparse
file, dataset ``tank/z`` mounted at /mnt/z, a hand-made snapshot ``taken``, and snapkit's zs1
and zs2, zs2 mounted -- and :data:`ZFS_CASES`; the fingerprint then lists every dataset and
snapshot too.

Prints one JSON object: {"cases": [...], "tried": N, "clean": M}. Standard library only.
"""

from __future__ import annotations

import sys

sys.path.insert(0, "/src")

import fcntl
import json
import os
import random
import signal
import subprocess
import time
from dataclasses import asdict, dataclass

from vmtests.guest.proc import log, run

STATE = "/tmp/hostile-state"
COW = "/tmp/hostile-cow"
ENV = {**os.environ, "SNAPKIT_STATE_DIR": STATE, "DM_DISABLE_UDEV": "1"}
NOBODY = 65534
LOCKS = f"{STATE}/locks"


@dataclass(frozen=True)
class Case:
    label: str
    argv: tuple[str, ...]
    words: str  # what the one stderr line must contain (case-insensitive): names the problem
    as_nobody: bool = False
    env: tuple[tuple[str, str], ...] = ()


@dataclass
class Outcome:
    label: str
    argv: list[str]
    returncode: int
    stderr: str
    exit_ok: bool
    one_line: bool
    names_problem: bool
    has_hint: bool
    unchanged: bool
    diff: str

    @property
    def clean(self) -> bool:
        return (
            self.exit_ok
            and self.one_line
            and self.names_problem
            and self.has_hint
            and (self.unchanged)
        )


def _sys_dm() -> list[str]:
    """Name, uuid, suspended and holders of every dm device, from sysfs: no process to start."""
    rows = []
    for kname in sorted(os.listdir("/sys/block")):
        base = f"/sys/block/{kname}"
        if not os.path.isdir(f"{base}/dm"):
            continue
        fields = []
        for leaf in ("dm/name", "dm/uuid", "dm/suspended"):
            with open(f"{base}/{leaf}", encoding="utf-8") as f:
                fields.append(f.read().strip())
        rows.append(" ".join([kname, *fields, ",".join(sorted(os.listdir(f"{base}/holders")))]))
    return rows


def fingerprint() -> str:
    """Everything a snapkit command could leave behind, as one text."""
    parts = []
    if os.path.exists("/dev/zfs"):
        out = subprocess.run(
            ["zfs", "list", "-H", "-t", "all", "-o", "name"], capture_output=True, text=True
        )
        parts.append("# zfs\n" + out.stdout + out.stderr)
    for title, argv in (("tables", ["dmsetup", "table"]), ("loops", ["losetup", "-a"])):
        out = subprocess.run(argv, capture_output=True, text=True, env=ENV, check=False)
        parts.append(f"# {title}\n" + "\n".join(sorted((out.stdout + out.stderr).splitlines())))
    parts.append("# dm\n" + "\n".join(_sys_dm()))
    with open("/proc/mounts", encoding="utf-8") as f:
        parts.append("# mounts\n" + "\n".join(sorted(f.read().splitlines())))
    try:
        with open(f"{STATE}/state.json", encoding="utf-8") as f:
            parts.append("# state\n" + f.read())
    except FileNotFoundError:
        parts.append("# state\nnone")
    parts.append("# cow\n" + "\n".join(sorted(os.listdir(COW))))
    return "\n".join(parts) + "\n"


def snapkit(*args: str, nobody: bool = False, env: dict[str, str] | None = None) -> Result:
    who = NOBODY if nobody else None
    proc = subprocess.run(
        ["snapkit", *args],
        capture_output=True,
        env={**ENV, **(env or {})},
        check=False,
        timeout=300,
        user=who,
        group=who,
        extra_groups=[] if nobody else None,
    )
    return Result(
        proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    )


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def must(*args: str) -> None:
    r = snapkit(*args)
    if r.returncode != 0:
        raise SystemExit(f"setup: snapkit {' '.join(args)} exited {r.returncode}: {r.stderr}")


def setup() -> None:
    """The stage every case plays on."""
    sh = "; ".join(
        [
            f"mkdir -p /mnt/plain /mnt/o /mnt/s /mnt/lv /mnt/empty {COW} {STATE}",
            "truncate -s 64M /tmp/plain.img /tmp/data.img /tmp/data2.img /tmp/pv.img",
            "losetup /dev/loop0 /tmp/plain.img",
            "losetup /dev/loop1 /tmp/data.img",
            "losetup /dev/loop2 /tmp/data2.img",
            "losetup /dev/loop3 /tmp/pv.img",
            "mkfs.ext4 -q -F /dev/loop0",
            "mount /dev/loop0 /mnt/plain",
            "dmsetup create z --table '0 2048 zero'",
            "vgcreate -q vg0 /dev/loop3",
            "lvcreate -q -y -L 32M -n lv0 vg0",
            "mkfs.ext4 -q -F /dev/vg0/lv0",
            "mount /dev/vg0/lv0 /mnt/lv",
        ]
    )
    run(["sh", "-euc", sh])
    must("device", "prepare", "/dev/loop1", "--name", "data")
    must("device", "prepare", "/dev/loop2", "--name", "data2")
    run(["sh", "-euc", "mkfs.ext4 -q -F /dev/mapper/data; mount /dev/mapper/data /mnt/o"])
    must(
        "snapshot",
        "create",
        "/mnt/o",
        "--name",
        "s1",
        "--method",
        "dm",
        "--cow-dir",
        COW,
        "--cow-size",
        "16M",
    )
    run(["mount", "-o", "ro", "/dev/mapper/s1", "/mnt/s"])
    must(
        "snapshot",
        "create",
        "/dev/mapper/data2",
        "--name",
        "s2",
        "--method",
        "dm",
        "--cow-dir",
        COW,
        "--cow-size",
        "12K",
    )
    # Three chunks hold one exception: the second origin chunk written invalidates s2.
    run(["dd", "if=/dev/urandom", "of=/dev/mapper/data2", "bs=64K", "count=4", "oflag=direct"])
    must("snapshot", "create", "/mnt/lv", "--name", "ls1", "--method", "lvm", "--cow-size", "8M")
    os.chmod(STATE, 0o755)  # so the non-root cases reach snapkit's own checks, not EACCES
    status = snapkit("snapshot", "status", "s2", "--json")
    log(f"s2 after the overflow: {status.stdout.strip()}")


def setup_zfs() -> None:
    """The ZFS stage (``--zfs``): see the module's docstring."""
    sh = "; ".join(
        [
            "modprobe zfs",
            "mkdir -p /mnt/z /mnt/zs",
            "truncate -s 128M /tmp/pool.img",
            "zpool create -f -m none tank /tmp/pool.img",
            "zfs create -o mountpoint=legacy tank/z",
            "mount -t zfs tank/z /mnt/z",
            "zfs snapshot tank/z@taken",
        ]
    )
    run(["sh", "-euc", sh])
    must("snapshot", "create", "/mnt/z", "--name", "zs1", "--method", "zfs")
    must("snapshot", "create", "/mnt/z", "--name", "zs2", "--method", "zfs")
    must("snapshot", "mount", "zs2", "/mnt/zs")


C = Case
CREATE = ("snapshot", "create")
DM = ("--method", "dm", "--cow-dir", COW, "--cow-size", "16M")
ON_O = (*CREATE, "/mnt/o", *DM)

CASES: tuple[Case, ...] = (
    # what is snapshotted
    C("nonexistent path", (*CREATE, "/nonexistent", "--name", "x", *DM), "/nonexistent"),
    C("character device", (*CREATE, "/dev/null", "--name", "x", *DM), "/dev/null"),
    C("regular file", (*CREATE, "/tmp/plain.img", "--name", "x", *DM), "plain.img"),
    C("unmounted directory", (*CREATE, "/mnt/empty", "--name", "x", *DM), "mount point"),
    C("plain loop, not dm", (*CREATE, "/mnt/plain", "--name", "x", *DM), "device-mapper"),
    C("unprepared loop device", (*CREATE, "/dev/loop0", "--name", "x", *DM), "device-mapper"),
    C("zero-table dm device", (*CREATE, "/dev/mapper/z", "--name", "x", *DM), "table"),
    # names
    C("name of a snapshot", (*ON_O, "--name", "s1"), "in use"),
    C("name of a foreign dm device", (*ON_O, "--name", "z"), "in use"),
    C("name of a prepared device", (*ON_O, "--name", "data2"), "in use"),
    C("name with a space", (*ON_O, "--name", "a b"), "contains"),
    C("name with a newline", (*ON_O, "--name", "a\nb 0 8 zero"), "contains"),
    C("name with a slash", (*ON_O, "--name", "a/b"), "contains"),
    C("name with a control char", (*ON_O, "--name", "a\x01b"), "contains"),
    C("name with non-ASCII", (*ON_O, "--name", "sn\u00e4p"), "contains"),
    C("name of 200 chars", (*ON_O, "--name", "n" * 200), "long"),
    C("empty name", (*ON_O, "--name", ""), "empty"),
    C("reserved name", (*ON_O, "--name", "control"), "reserved"),
    C("missing --name", ON_O, "--name"),
    # COW and chunk
    C("COW on the origin fs", (*ON_O, "--name", "x", "--cow-dir", "/mnt/o/cow"), "snapshotted"),
    C("COW below 3 chunks", (*ON_O, "--name", "x", "--cow-size", "8K"), "three"),
    C("COW size unreadable", (*ON_O, "--name", "x", "--cow-size", "lots"), "size"),
    C("COW size zero", (*ON_O, "--name", "x", "--cow-size", "0M"), "zero"),
    C("COW beyond the free space", (*ON_O, "--name", "x", "--cow-size", "99999T"), "outgrow"),
    C("COW dir is a file", (*ON_O, "--name", "x", "--cow-dir", "/tmp/plain.img"), "directory"),
    C("chunk 3K", (*ON_O, "--name", "x", "--chunk-size", "3K"), "chunk"),
    C("chunk 1M", (*ON_O, "--name", "x", "--chunk-size", "1M"), "chunk"),
    C("chunk 6s", (*ON_O, "--name", "x", "--chunk-size", "6s"), "chunk"),
    C("chunk of odd bytes", (*ON_O, "--name", "x", "--chunk-size", "1000b"), "sector"),
    # methods
    C("unknown method", (*ON_O, "--name", "x", "--method", "hammer2"), "invalid choice"),
    C("lvm on a non-LV", (*ON_O, "--name", "x", "--method", "lvm"), "logical volume"),
    C(
        "lvm-thin on a thick LV",
        (*CREATE, "/mnt/lv", "--name", "x", "--method", "lvm-thin"),
        "thin",
    ),
    C("btrfs on ext4", (*ON_O, "--name", "x", "--method", "btrfs"), "btrfs"),
    C(
        "dm-direct on a snapshot-origin",
        (*ON_O, "--name", "x", "--method", "dm-direct"),
        "snapshot-origin",
    ),
    C(
        "lvm name of an existing LV",
        (*CREATE, "/mnt/lv", "--name", "lv0", "--method", "lvm"),
        "exists",
    ),
    C(
        "lvm reserved LV name",
        (*CREATE, "/mnt/lv", "--name", "snapshotx", "--method", "lvm"),
        "reserved",
    ),
    C("failing --pre hook", (*ON_O, "--name", "x", "--pre", "exit 3"), "--pre"),
    # merge, discard, status, mount
    C("merge of an invalid snapshot", ("snapshot", "merge", "s2"), "invalid"),
    C("merge with the origin mounted", ("snapshot", "merge", "s1"), "unmount"),
    C("discard of a mounted snapshot", ("snapshot", "discard", "s1"), "in use"),
    C("merge of nothing", ("snapshot", "merge", "nope"), "no snapshot"),
    C("discard of nothing", ("snapshot", "discard", "nope"), "no snapshot"),
    C("status of nothing", ("snapshot", "status", "nope"), "no snapshot"),
    C("mount on a missing dir", ("snapshot", "mount", "s1", "/nonexistent"), "/nonexistent"),
    C("snapshot without a verb", ("snapshot",), "verb"),
    C("unknown command", ("nosuch",), "invalid choice"),
    # device
    C("prepare a mounted device", ("device", "prepare", "/dev/loop0", "--name", "y"), "mounted"),
    C(
        "prepare a nonexistent path",
        ("device", "prepare", "/nonexistent", "--name", "y"),
        "block device",
    ),
    C("prepare /dev/null", ("device", "prepare", "/dev/null", "--name", "y"), "block device"),
    C(
        "prepare a dm device",
        ("device", "prepare", "/dev/mapper/z", "--name", "y"),
        "device-mapper",
    ),
    C(
        "prepare under a taken name",
        ("device", "prepare", "/dev/loop0", "--name", "data"),
        "in use",
    ),
    C("release with snapshots", ("device", "release", "data"), "snapshots"),
    C("release a foreign device", ("device", "release", "z"), "not a device snapkit prepared"),
    # freeze
    C("freeze a non-mountpoint", ("freeze", "/mnt/empty", "--", "true"), "mount point"),
    C("freeze with no command", ("freeze", "/mnt/plain"), "command"),
    C("freeze a nonexistent path", ("freeze", "/nonexistent", "--", "true"), "/nonexistent"),
    # privileges
    C("list as non-root", ("snapshot", "list"), "root", as_nobody=True),
    C("create as non-root", (*ON_O, "--name", "x"), "root", as_nobody=True),
    C("merge as non-root", ("snapshot", "merge", "s1"), "root", as_nobody=True),
    # last: if it is wrongly accepted, it creates a snapshot named x
    C("negative --max-freeze", (*ON_O, "--name", "x", "--max-freeze", "-1"), "freeze"),
)

ZFS = ("--method", "zfs")
ZFS_CASES: tuple[Case, ...] = (
    C("zfs on a non-ZFS mount", (*CREATE, "/mnt/plain", "--name", "x", *ZFS), "not a ZFS"),
    C("zfs on a missing dataset", (*CREATE, "tank/nope", "--name", "x", *ZFS), "tank/nope"),
    C("zfs snapshot name in use", (*CREATE, "/mnt/z", "--name", "taken", *ZFS), "in use"),
    C("zfs name of a snapkit snapshot", (*CREATE, "/mnt/z", "--name", "zs1", *ZFS), "in use"),
    C("zfs name ZFS refuses", (*CREATE, "/mnt/z", "--name", "a+b", *ZFS), "'+'"),
    C("zfs on a snapshot's mount", (*CREATE, "/mnt/zs", "--name", "x", *ZFS), "snapshot"),
    C("zfs rollback across later snapshots", ("snapshot", "merge", "zs1"), "later snapshot"),
    C("zfs merge of a mounted snapshot", ("snapshot", "merge", "zs2"), "mounted"),
    C("zfs discard of a mounted snapshot", ("snapshot", "discard", "zs2"), "mounted"),
    C("zfs mount --rw", ("snapshot", "mount", "zs1", "/mnt/empty", "--rw"), "read-only"),
    C("merge --force of a dm snapshot", ("snapshot", "merge", "s1", "--force"), "nothing to"),
)

CONTROLS: tuple[Case, ...] = (
    C("CONTROL valid create", (*ON_O, "--name", "ctl"), "anything"),
    C("CONTROL wrong word", ("snapshot", "status", "nope"), "this text is not in the error"),
)


def hinted(line: str) -> bool:
    """A hint is the parenthesised tail the CLI appends (errors.py), or a 'see --help' pointer."""
    return line.rstrip().endswith(")") and " (" in line


def try_case(case: Case, before: str | None = None) -> Outcome:
    """Run one case; ``before`` is the fingerprint the previous case left (it is the same
    system, and each fingerprint costs two process starts under TCG)."""
    before = before if before is not None else fingerprint()
    r = snapkit(*case.argv, nobody=case.as_nobody, env=dict(case.env))
    after = fingerprint()
    lines = r.stderr.splitlines()
    diff = ""
    if after != before:
        b, a = set(before.splitlines()), set(after.splitlines())
        diff = "; ".join([f"-{x}" for x in sorted(b - a)] + [f"+{x}" for x in sorted(a - b)])[:600]
    global _LAST
    _LAST = after
    return Outcome(
        case.label,
        list(case.argv),
        r.returncode,
        r.stderr[-600:],
        exit_ok=r.returncode in (1, 2),
        one_line=len(lines) == 1 and r.stderr.endswith("\n"),
        names_problem=bool(lines) and case.words.lower() in lines[0].lower(),
        has_hint=bool(lines) and hinted(lines[0]),
        unchanged=after == before,
        diff=diff,
    )


_LAST: str | None = None


def concurrent_create() -> Outcome:
    """Two creates at once on one origin: the first is held paused (nothing done yet, lock
    held) by flow's test hook; the second must be refused without touching anything."""
    first = subprocess.Popen(
        ["snapkit", *ON_O, "--name", "first"],
        env={**ENV, "SNAPKIT_TEST_PAUSE_AT": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert first.stderr is not None
    fcntl.fcntl(first.stderr, fcntl.F_SETFL, os.O_NONBLOCK)
    seen, deadline = b"", time.monotonic() + 60
    while b"test pause" not in seen and time.monotonic() < deadline:
        time.sleep(0.1)
        seen += first.stderr.read() or b""
    try:
        return try_case(C("two creates at once", (*ON_O, "--name", "second"), "busy"))
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(60)


def chosen(argv: list[str]) -> tuple[tuple[Case, ...], bool]:
    """All cases, or ``--sample N --seed S``: N of them picked by the seed (the CI slice)."""
    if "--sample" not in argv:
        return CASES, True
    n = int(argv[argv.index("--sample") + 1])
    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
    picked = set(random.Random(seed).sample(range(len(CASES)), min(n, len(CASES))))
    return tuple(c for i, c in enumerate(CASES) if i in picked), False


def main(argv: list[str]) -> int:
    setup()
    cases, concurrent = chosen(argv)
    if "--zfs" in argv:
        setup_zfs()
        cases += ZFS_CASES
    outcomes = [try_case(c, _LAST) for c in cases]
    if concurrent:
        outcomes.append(concurrent_create())
    if "--control" in argv:  # last: the valid create changes the stage
        outcomes += [try_case(c, _LAST) for c in CONTROLS[::-1]]
    for o in outcomes:
        log(f"{'ok ' if o.clean else 'BAD'} {o.label}: exit {o.returncode} {o.stderr.strip()!r}")
    doc = {
        "tried": len(outcomes),
        "clean": sum(o.clean for o in outcomes),
        "cases": [{**asdict(o), "clean": o.clean} for o in outcomes],
    }
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
