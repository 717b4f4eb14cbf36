"""Snapshot groups (issue 15) in a real guest, while a cross-volume writer runs.

The writer (vmtests/guest/crosswriter.py) writes and fsyncs record n on A, and only then
record n on B. A group is one point in time, so for every n on B's snapshot, n is on A's
(0 broken pairs), and every pair acknowledged before the create is in both. The negative
control takes the members one after another with a pause and no shared freeze: the same
check must find broken pairs, or it proves nothing.
"""

from __future__ import annotations

import json
import shlex
import signal
import time

from workload import COW_DIR, fingerprint, fsck, interrupted_at, snapkit, wait_ledger

from vmtests import guest
from vmtests.vm.channel import Process
from vmtests.vm.session import Session

MEMBERS = ("a", "b")


def _two_origins(vm: Session) -> None:
    """Two prepared dm devices (data-a, data-b) over loop images, ext4, on /mnt/a and /mnt/b."""
    for m in MEMBERS:
        loop = (
            vm.sh(
                f"mkdir -p /mnt/{m} /mnt/s {COW_DIR}; truncate -s 96M /tmp/base-{m}.img; "
                f"/sbin/losetup -f --show /tmp/base-{m}.img"
            )
            .stdout.decode()
            .strip()
        )
        snapkit(vm, "device", "prepare", loop, "--name", f"data-{m}")
        vm.sh(f"/sbin/mkfs.ext4 -q -F /dev/mapper/data-{m} && mount /dev/mapper/data-{m} /mnt/{m}")


def _start(vm: Session) -> Process:
    vm.sh("rm -f /tmp/stop /tmp/ledger")
    argv = guest.command("crosswriter", "write", "/mnt/a/w", "/mnt/b/w", "/tmp/ledger", "/tmp/stop")
    proc = vm.spawn(argv)
    wait_ledger(vm, 5)
    return proc


def _stop(vm: Session, proc: Process) -> None:
    vm.sh("touch /tmp/stop")
    result = proc.wait(120)
    assert result.returncode == 0, result.stderr


def _ledger(vm: Session) -> int:
    return int(vm.sh("cat /tmp/ledger | wc -l").stdout.decode().strip() or 0)


def _check(vm: Session, dir_a: str, dir_b: str, acknowledged: int) -> dict[str, list[int] | int]:
    argv = guest.command("crosswriter", "check", dir_a, dir_b, str(acknowledged))
    result: dict[str, list[int] | int] = json.loads(vm.sh(shlex.join(argv)).stdout)
    return result


def test_dm_group_is_one_point_in_time_and_merges_back(vm: Session) -> None:
    _two_origins(vm)
    writer = _start(vm)
    before = _ledger(vm)
    created = snapkit(
        vm,
        "snapshot",
        "create",
        "/mnt/a",
        "/mnt/b",
        "--name",
        "g",
        "--method",
        "dm",
        "--cow-dir",
        COW_DIR,
        "--cow-size",
        "48M",
        "--json",
    )
    assert json.loads(created.stdout)["state"] == "active"
    wait_ledger(vm, _ledger(vm) + 5)  # the writer goes on after the create
    _stop(vm, writer)

    status = json.loads(snapkit(vm, "snapshot", "status", "g", "--json").stdout)
    members = [(m["origin"], m["mountpoint"], m["device"]) for m in status["members"]]
    assert members == [
        ("/dev/mapper/data-a", "/mnt/a", "/dev/mapper/g-a"),
        ("/dev/mapper/data-b", "/mnt/b", "/dev/mapper/g-b"),
    ], status
    for m in MEMBERS:
        fsck(vm, "ext4", f"/dev/mapper/g-{m}")

    snapkit(vm, "snapshot", "mount", "g", "/mnt/s")
    seen = _check(vm, "/mnt/s/a/w", "/mnt/s/b/w", before)
    assert seen["missing"] == [] and seen["broken"] == [], seen
    print(f"dm group: {before} pairs acknowledged before; snapshots A {seen['a']}, B {seen['b']}")
    snapkit(vm, "snapshot", "umount", "g")

    # merge: refused while an origin is mounted (before any member starts), then both roll back
    refused = snapkit(vm, "snapshot", "merge", "g", "--wait", check=False)
    assert refused.returncode == 1 and refused.stderr.count(b"\n") == 1, refused.stderr
    assert json.loads(snapkit(vm, "snapshot", "status", "g", "--json").stdout)["state"] == "active"
    vm.sh("umount /mnt/a && umount /mnt/b")
    merged = json.loads(snapkit(vm, "snapshot", "merge", "g", "--wait", "--json").stdout)
    assert merged["state"] == "merged", merged
    for m in MEMBERS:
        fsck(vm, "ext4", f"/dev/mapper/data-{m}")
        vm.sh(f"mount /dev/mapper/data-{m} /mnt/{m}")
    back = _check(vm, "/mnt/a/w", "/mnt/b/w", before)
    assert back["missing"] == [] and back["broken"] == [], back
    assert back["a"] == seen["a"] and back["b"] == seen["b"], (back, seen)
    assert json.loads(snapkit(vm, "snapshot", "list", "--json").stdout) == []
    assert vm.sh("dmsetup ls | wc -l").stdout == b"2\n"  # data-a and data-b, nothing else


def _two_lvs(vm: Session) -> None:
    """Two classic LVs (vg/a, vg/b) on one loop-backed VG, ext4, on /mnt/a and /mnt/b."""
    vm.sh(
        "mkdir -p /mnt/a /mnt/b /mnt/s; truncate -s 400M /tmp/pv.img; "
        "pv=$(/sbin/losetup -f --show /tmp/pv.img); pvcreate -q $pv && vgcreate -q vg $pv"
    )
    for m in MEMBERS:
        vm.sh(
            f"lvcreate -q -y -n {m} -L 96m vg && /sbin/mkfs.ext4 -q -F /dev/vg/{m} && "
            f"mount /dev/vg/{m} /mnt/{m}"
        )


def test_lvm_group_is_one_point_in_time_and_merges_back(vm: Session) -> None:
    """lvcreate's own lockfs suspend fails on a frozen filesystem (EBUSY); the group holds
    each origin suspended without lockfs so that lvcreate skips it (group/create.py)."""
    _two_lvs(vm)
    writer = _start(vm)
    before = _ledger(vm)
    created = snapkit(
        vm, "snapshot", "create", "/mnt/a", "/mnt/b", "--name", "g", "--method", "lvm",
        "--cow-size", "48M", "--max-freeze", "120", "--json",
    )  # fmt: skip
    assert json.loads(created.stdout)["state"] == "active"
    wait_ledger(vm, _ledger(vm) + 5)  # the writer goes on after the create
    _stop(vm, writer)
    suspended = vm.sh("dmsetup info -c --noheadings -o name,suspended").stdout.decode()
    assert "Suspended" not in suspended, suspended  # no origin left held

    status = json.loads(snapkit(vm, "snapshot", "status", "g", "--json").stdout)
    members = [(m["mountpoint"], m["device"], m["state"]) for m in status["members"]]
    assert members == [
        ("/mnt/a", "/dev/mapper/vg-g--a", "active"),
        ("/mnt/b", "/dev/mapper/vg-g--b", "active"),
    ], status
    for m in MEMBERS:
        fsck(vm, "ext4", f"/dev/mapper/vg-g--{m}")
    snapkit(vm, "snapshot", "mount", "g", "/mnt/s")
    seen = _check(vm, "/mnt/s/a/w", "/mnt/s/b/w", before)
    assert seen["missing"] == [] and seen["broken"] == [], seen
    print(f"lvm group: {before} pairs acknowledged before; snapshots A {seen['a']}, B {seen['b']}")
    snapkit(vm, "snapshot", "umount", "g")

    vm.sh("umount /mnt/a && umount /mnt/b")
    merged = json.loads(snapkit(vm, "snapshot", "merge", "g", "--wait", "--json").stdout)
    assert merged["state"] == "merged", merged
    for m in MEMBERS:
        fsck(vm, "ext4", f"/dev/vg/{m}")
        vm.sh(f"mount /dev/vg/{m} /mnt/{m}")
    back = _check(vm, "/mnt/a/w", "/mnt/b/w", before)
    assert back["missing"] == [] and back["broken"] == [], back
    assert back["a"] == seen["a"] and back["b"] == seen["b"], (back, seen)
    assert json.loads(snapkit(vm, "snapshot", "list", "--json").stdout) == []
    assert vm.sh("lvs --noheadings -o lv_name vg | wc -l").stdout == b"2\n"  # a and b only


# The lvm group's plan for two members, as --dry-run numbers it: 1-2 start the watchdogs, 3-4
# freeze, 5-7 member a (suspend --nolockfs, lvcreate, resume if left), 8-10 member b, 11-12
# thaw, 13-14 stop the watchdogs; 15 is the pause after the last step, before the records.
KILL_POINTS = ("6", "9", "15")


def test_lvm_group_killed_inside_its_window_is_settled_gone(vm: Session) -> None:
    """SIGKILL of snapkit at points inside the shared window: before member a's lvcreate (a's
    origin held suspended by snapkit), before b's (a's snapshot made, b held), and after the
    last step (both made, nothing recorded). The watchdogs resume what snapkit held and thaw
    every member; ``recover`` then makes the group gone, member by member: no snapshot LV, no
    record, every member writable."""
    _two_lvs(vm)
    create = ["snapshot", "create", "/mnt/a", "/mnt/b", "--name", "g", "--method", "lvm"]
    plan = snapkit(vm, *create, "--max-freeze", "120", "--dry-run").stdout.decode()
    assert "dmsetup suspend --nolockfs vg-b" in plan, plan
    for point in KILL_POINTS:
        code = interrupted_at(vm, [*create, "--max-freeze", "120"], point, signal.SIGKILL)
        assert code == -signal.SIGKILL, (point, code)
        time.sleep(3)  # the watchdogs see snapkit's end, resume and thaw; lvcreate finishes
        for m in MEMBERS:  # writable again: nothing left frozen or suspended
            vm.sh(f"timeout 30 sh -c 'echo {point} > /mnt/{m}/after && sync /mnt/{m}/after'")
        held = vm.sh("dmsetup info -c --noheadings -o name,suspended").stdout.decode()
        assert "Suspended" not in held, (point, held)
        recovered = snapkit(vm, "recover", "--json")
        assert b"group g" in recovered.stdout, (point, recovered.stdout)
        lvs = vm.sh("lvs --noheadings -o lv_name vg").stdout.decode().split()
        assert sorted(lvs) == ["a", "b"], (point, lvs)
        assert json.loads(snapkit(vm, "snapshot", "list", "--json").stdout) == [], point
        print(f"lvm group killed before step {point}: settled gone")


def test_bad_group_inputs_are_refused_in_one_line_with_nothing_changed(vm: Session) -> None:
    """Issue 15's bad inputs, each through the CLI: exit 1, one line on stderr (the error and
    its hint), and the system byte for byte as it was (dm tables, loops, mounts, LVs, the COW
    directory, the state file)."""
    _two_origins(vm)
    vm.sh(  # an LV (auto picks lvm there), an unmounted prepared device, two btrfs
        "truncate -s 300M /tmp/pv.img; pv=$(/sbin/losetup -f --show /tmp/pv.img); "
        "pvcreate -q $pv && vgcreate -q vg $pv && lvcreate -q -y -n l -L 64m vg && "
        "/sbin/mkfs.ext4 -q -F /dev/vg/l && mkdir -p /mnt/l /mnt/x /mnt/y && mount /dev/vg/l /mnt/l"
    )
    loop = vm.sh("truncate -s 64M /tmp/u.img; /sbin/losetup -f --show /tmp/u.img").stdout.decode()
    snapkit(vm, "device", "prepare", loop.strip(), "--name", "data-u")
    for m in ("x", "y"):
        vm.sh(
            f"truncate -s 160M /tmp/{m}.img; d=$(/sbin/losetup -f --show /tmp/{m}.img); "
            f"/sbin/mkfs.btrfs -q -f $d && mount $d /mnt/{m}"
        )
    dm = ["--method", "dm", "--cow-dir", COW_DIR, "--cow-size", "16M"]
    state = lambda: fingerprint(vm) + vm.sh("lvs --noheadings 2>&1").stdout.decode()  # noqa: E731
    alone = [
        (["/mnt/a", "/mnt/a", "--name", "h", *dm], "given twice"),
        (["/mnt/a", "/dev/mapper/data-u", "--name", "h", *dm], "is not mounted"),
        (["/mnt/a", "/mnt/l", "--name", "h", "--cow-dir", COW_DIR], "mixed methods"),
        (["/mnt/x", "/mnt/y", "--name", "h"], "btrfs cannot snapshot several"),
    ]
    beside_g = [  # once a group g of /mnt/a and /mnt/b exists
        (["/mnt/a", "/mnt/b", "--name", "g", *dm], "already in use"),
        (["/mnt/a", "/mnt/l", "--name", "h", *dm], "already a member of the group g"),
    ]
    for cases in (alone, beside_g):
        if cases is beside_g:
            snapkit(vm, "snapshot", "create", "/mnt/a", "/mnt/b", "--name", "g", *dm)
        before = state()
        for args, words in cases:
            refused = snapkit(vm, "snapshot", "create", *args, check=False)
            err = refused.stderr.decode()
            assert refused.returncode == 1 and err.count("\n") == 1 and words in err, (args, err)
            assert err.rstrip().endswith(")"), err  # "message (hint)"
            assert state() == before, args
            print(f"refused: {err.strip()}")


def test_freeze_group_runs_the_command_once_over_both(vm: Session) -> None:
    _two_origins(vm)
    writer = _start(vm)
    before = _ledger(vm)
    copy = "set -- $SNAPKIT_DEVICES; cat $1 > /tmp/copy-a.img && cat $2 > /tmp/copy-b.img"
    snapkit(
        vm,
        "snapshot",
        "create",
        "/mnt/a",
        "/mnt/b",
        "--name",
        "f",
        "--method",
        "freeze",
        "--max-freeze",
        "120",
        "--command",
        copy,
    )
    _stop(vm, writer)
    for m in MEMBERS:
        fsck(vm, "ext4", f"/tmp/copy-{m}.img")
        vm.sh(f"mkdir -p /mnt/c{m} && mount -o ro,loop /tmp/copy-{m}.img /mnt/c{m}")
    seen = _check(vm, "/mnt/ca/w", "/mnt/cb/w", before)
    assert seen["missing"] == [] and seen["broken"] == [], seen
    status = json.loads(snapkit(vm, "snapshot", "status", "f", "--json").stdout)
    assert [m["mountpoint"] for m in status["members"]] == ["/mnt/a", "/mnt/b"]
    snapkit(vm, "snapshot", "discard", "f")
    assert json.loads(snapkit(vm, "snapshot", "list", "--json").stdout) == []


def test_negative_control_one_after_another_is_caught(vm: Session) -> None:
    """No shared point in time: A's snapshot, a pause, then B's. B's snapshot then holds
    records whose A record is not in A's: the cross-volume check must say so."""
    _two_origins(vm)
    writer = _start(vm)
    for m in MEMBERS:
        snapkit(
            vm, "snapshot", "create", f"/mnt/{m}", "--name", f"c-{m}", "--method", "dm",
            "--cow-dir", COW_DIR, "--cow-size", "48M",
        )  # fmt: skip
        time.sleep(1.0)
    _stop(vm, writer)
    for m in MEMBERS:
        vm.sh(f"mkdir -p /mnt/s{m}")
        snapkit(vm, "snapshot", "mount", f"c-{m}", f"/mnt/s{m}")
    seen = _check(vm, "/mnt/sa/w", "/mnt/sb/w", 0)
    broken = seen["broken"]
    assert isinstance(broken, list) and broken, f"the control was not caught: {seen}"
    print(f"negative control: A has {seen['a']}, B has {seen['b']}, {len(broken)} pairs broken")


def test_sigkill_inside_a_dm_group_window_the_watchdogs_resume_every_member(vm: Session) -> None:
    """snapkit SIGKILLed with every member's origin suspended (the pause before the first
    resume): each member's watchdog resumes it within --max-freeze, the cross-volume writer
    goes on, and recover makes the group wholly gone with every acknowledged record kept."""
    import re

    from workload import paused_at

    max_freeze, slack = 6.0, 4.0
    _two_origins(vm)
    args = ["snapshot", "create", "/mnt/a", "/mnt/b", "--name", "g", "--method", "dm"]
    args += ["--cow-dir", COW_DIR, "--cow-size", "32M", "--max-freeze", str(max_freeze)]
    text = snapkit(vm, *args, "--dry-run").stdout.decode().split("then, once")[0]
    numbered = re.findall(r"^\s+(\d+)\. (.*)$", text, re.M)
    last = max(int(n) for n, what in numbered if what.startswith("dmsetup suspend"))
    writer = _start(vm)
    proc = paused_at(vm, args, str(last + 1))
    paused = time.monotonic()
    held = vm.sh("cat /sys/block/dm-*/dm/suspended | grep -c 1 || true").stdout.decode()
    assert int(held) == 2, "the pause is not inside the group's window"
    proc.signal(signal.SIGKILL)
    before = _ledger(vm)
    while _ledger(vm) <= before and time.monotonic() - paused < max_freeze + slack + 10:
        time.sleep(0.2)
    hung = time.monotonic() - paused
    assert hung <= max_freeze + slack, f"the writer hung {hung:.1f} s"
    _stop(vm, writer)
    acked = _ledger(vm)
    snapkit(vm, "recover")
    held = vm.sh("cat /sys/block/dm-*/dm/suspended | grep -c 1 || true").stdout.decode()
    assert int(held) == 0
    assert b"g" not in snapkit(vm, "snapshot", "list").stdout  # wholly gone
    seen = _check(vm, "/mnt/a/w", "/mnt/b/w", acked)
    assert seen["missing"] == [] and seen["broken"] == [], seen
