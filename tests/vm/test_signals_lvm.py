"""SIGINT, SIGTERM and SIGKILL at every step of ``create`` and ``merge`` for ``--method lvm``
(issue 6, item 5): no device is left suspended, no filesystem frozen, no loop device leaked.

Two ways in. Between steps, the flow's hook ``SNAPKIT_TEST_PAUSE_AT=[P:]N`` stops snapkit
before step N and says so. Inside a step, ``vmtests/guest/faults/sigwhen.py`` sends the signal the
moment the origin's ``/sys/block/dm-N/dm/suspended`` reads 1, i.e. while ``lvcreate`` or
``lvconvert`` holds it suspended (a window of tens of milliseconds: it needs a second vCPU).

Measured on the 6.1 guest, before the fix in snapkit/methods/lvm/snapshot.py: a SIGTERM there made
snapkit SIGKILL ``lvcreate`` mid-suspend, LVM's metadata was left half written
(``s1 -wi-XX--X-``), the rollback failed, and the next create left the origin suspended for
good; a SIGINT inside ``lvconvert --merge`` left four devices suspended. Now the command is let
finish (``lvcreate``), or run until its tables are in place (``lvconvert``), before snapkit
undoes or stops.

SIGKILL of snapkit itself cannot reach ``lvcreate``/``lvconvert`` (they run in their own
sessions): they finish. Every lvm verb is recorded first (``pending create``/``merge``), so a
SIGKILL leaves the mark, and each test then runs ``snapkit recover`` and checks what it
settles (snapkit/methods/lvm/recover.py): a create killed after ``lvcreate`` is a whole snapshot,
kept; one killed before it is undone and forgotten; a merge killed before ``lvconvert`` ran
gets its mark cleared, the snapshot untouched; a merge LVM started goes on in the kernel and
is left to it, and the record goes once LVM has merged. ``lvconvert`` itself may die with
snapkit (its output pipe closes) before it drops the merged snapshot LV -- then ``merge``
again finishes it. While marked, ``discard --force`` is refused in one line naming the ways
out: finishing the merge, or ``snapkit recover``.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import time

import pytest
from workload import ENV, interrupted_at, snapkit

from vmtests import guest
from vmtests.vm.session import Session

VG = (
    "truncate -s 600M /tmp/pv.img; L=$(/sbin/losetup --show -f /tmp/pv.img); "
    "pvcreate -q $L; vgcreate -q vg $L; lvcreate -q -y -n lv -L 200M vg; "
    "mkfs.{fs} -q {force} /dev/vg/lv; mkdir -p /mnt/o /mnt/s; mount /dev/vg/lv /mnt/o; "
    "echo before > /mnt/o/marker; sync"
)
CREATE = ["snapshot", "create", "/mnt/o", "--name", "s1", "--method", "lvm"]
MERGE = ["snapshot", "merge", "s1", "--wait"]
SIGWHEN = shlex.join(guest.command("faults.sigwhen"))
MAX_FREEZE = 10  # the btrfs create's --max-freeze (s)


def make_vg(vm: Session, fs: str = "ext4") -> None:
    vm.sh(VG.format(fs=fs, force="-f" if fs == "btrfs" else ""))


def fingerprint(vm: Session) -> str:
    """Everything a create or merge could change."""
    return vm.sh(
        "echo '# lvs'; lvs -a --noheadings -o lv_name,lv_attr vg; echo '# tables'; "
        "dmsetup table | sort; echo '# info'; dmsetup info -c --noheadings -o name,attr | sort; "
        "echo '# loops'; /sbin/losetup -a | sort; echo '# mounts'; cat /proc/mounts; "
        "echo '# state'; cat /tmp/state/state.json 2>/dev/null || echo none"
    ).stdout.decode()


def unblocked(vm: Session, mp: str = "/mnt/o", within: float = 20) -> None:
    """No device suspended, and a write plus fsync returns: nothing frozen under ``mp``."""
    assert b"Suspended" not in vm.sh("dmsetup info -c --noheadings -o suspended").stdout
    result = vm.run(["sh", "-c", f"echo probe > {mp}/probe && sync {mp}/probe"], timeout=within)
    assert result.returncode == 0 and not result.timed_out, "the filesystem is still blocked"


def _steps(text: str) -> int:
    return len(re.findall(r"^\s+\d+\. ", text.split("then, once")[0], re.M))


def _step_of(text: str, command: str) -> int:
    """The number ``--dry-run`` gives the step that runs ``command``."""
    found = re.search(rf"^\s+(\d+)\. {command} ", text, re.M)
    assert found, text
    return int(found.group(1))


def _pending(vm: Session) -> dict[str, str]:
    """Each record's pending mark ("" if none), read from the state file itself: ``snapshot
    list`` would already drop a record whose lvm merge it sees done."""
    raw = vm.sh("cat /tmp/state/state.json 2>/dev/null || echo '{}'").stdout
    return {
        r["name"]: r["details"].get("pending", "") for r in json.loads(raw).get("snapshots", [])
    }


def _refused_with_the_way_out(vm: Session) -> None:
    """``discard --force`` of a marked merge is refused -- LVM may be merging, or be done, and
    forgetting the record would hide either -- in one line that names both ways out."""
    refused = snapkit(vm, "snapshot", "discard", "s1", "--force", check=False)
    line = refused.stderr.decode()
    assert refused.returncode == 1 and len(line.splitlines()) == 1, line
    assert "a merge of s1 is under way, or was cut short" in line, line
    assert "'snapkit snapshot merge s1 --wait'" in line and "'snapkit recover'" in line, line


paused = interrupted_at  # the shared helper, under the name these tests read best with


def inside_suspend(vm: Session, args: list[str], signum: int, tries: int = 4) -> dict[str, object]:
    """Run snapkit and send ``signum`` while the origin is suspended; retried until it fired
    (returns the last run's report; the caller undoes what a run that did not fire made)."""
    env = " ".join(f"{k}={v}" for k, v in ENV.items())
    argv = [
        "sh",
        "-c",
        f"exec env {env} {SIGWHEN} vg-lv {signum} 300 -- snapkit "
        f"{' '.join(args)} 2>/tmp/err >/tmp/out",
    ]
    report: dict[str, object] = {}
    for _ in range(tries):
        vm.run(argv, timeout=400, check=True)
        report = dict(json.loads(vm.get("/tmp/out").decode().strip().splitlines()[-1]))
        if report["fired"]:
            return report
        if args[:2] == ["snapshot", "create"]:  # it ran to the end: undo it, try again
            snapkit(vm, "snapshot", "discard", "s1")
    raise AssertionError(f"the suspend was never caught in {tries} tries: {report}")


def test_sigterm_after_lvcreate_undoes_it(vm: Session) -> None:
    """The cheap case: stopped after ``lvcreate`` (before the record), SIGTERM removes the
    snapshot LV again."""
    make_vg(vm)
    before = fingerprint(vm)
    code = paused(vm, CREATE, "2", signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, (code, vm.get("/tmp/err"))
    assert fingerprint(vm) == before
    unblocked(vm)


@pytest.mark.slow
def test_sigint_and_sigterm_between_every_create_step(vm: Session) -> None:
    make_vg(vm)
    total = _steps(snapkit(vm, *CREATE, "--dry-run").stdout.decode())
    assert total >= 1
    before = fingerprint(vm)
    for step in range(1, total + 2):
        for signum in (signal.SIGINT, signal.SIGTERM):
            code = paused(vm, CREATE, str(step), signum)
            assert code == 128 + signum, (step, code, vm.get("/tmp/err"))
            assert fingerprint(vm) == before, f"step {step}"
            unblocked(vm)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_inside_lvcreates_suspend_undoes_it(vm_factory, signum: int) -> None:  # type: ignore[no-untyped-def]
    vm = vm_factory(cpus=2)
    make_vg(vm)
    vm.spawn(
        [
            "sh",
            "-c",
            "while :; do dd if=/dev/urandom of=/mnt/o/w bs=64k count=2 "
            "conv=fsync 2>/dev/null; done",
        ]
    )
    before = fingerprint(vm).split("# mounts")[0]
    for _ in range(3):
        report = inside_suspend(vm, CREATE, signum)
        assert report["returncode"] == 128 + signum, (report, vm.get("/tmp/err"))
        assert b"rollback incomplete" not in vm.get("/tmp/err"), vm.get("/tmp/err")
        unblocked(vm)
        assert fingerprint(vm).split("# mounts")[0] == before
    snapkit(vm, *CREATE)  # and LVM is still fine for the next one


@pytest.mark.slow
def test_sigkill_of_snapkit_during_and_after_lvcreate(vm_factory) -> None:  # type: ignore[no-untyped-def]
    vm = vm_factory(cpus=2)
    make_vg(vm)
    report = inside_suspend(vm, CREATE, signal.SIGKILL)
    assert report["returncode"] == -signal.SIGKILL
    time.sleep(3)  # lvcreate, in its own session, finishes on its own
    unblocked(vm)
    attr = vm.sh("lvs --noheadings -o lv_attr vg/s1").stdout.decode().strip()
    assert attr.startswith("swi-a-s"), attr  # a valid snapshot LV, recorded as pending create
    _recovered_and_kept(vm)
    code = paused(vm, CREATE, "2", signal.SIGKILL)  # after lvcreate, before the final record
    assert code == -signal.SIGKILL
    unblocked(vm)
    _recovered_and_kept(vm)


def _recovered_and_kept(vm: Session) -> None:
    """The record saved before lvcreate ran names the LV; recover keeps the whole snapshot."""
    listed = json.loads(snapkit(vm, "snapshot", "list", "--json").stdout)
    assert [(r["name"], r["details"].get("pending")) for r in listed] == [("s1", "create")]
    out = snapkit(vm, "recover").stdout.decode()
    assert "s1: the create had finished; kept" in out, out
    (shown,) = json.loads(snapkit(vm, "snapshot", "list", "--json").stdout)
    assert shown["state"] == "active" and "pending" not in shown["details"], shown
    snapkit(vm, "snapshot", "discard", "s1")


def _snapshot_then_change(vm: Session) -> None:
    snapkit(vm, *CREATE)
    vm.sh("echo after > /mnt/o/marker; sync; umount /mnt/o")


def _marker(vm: Session) -> str:
    vm.sh("mount /dev/vg/lv /mnt/o")
    try:
        return vm.sh("cat /mnt/o/marker").stdout.decode().strip()
    finally:
        vm.sh("umount /mnt/o")


@pytest.mark.slow
def test_signals_at_every_merge_step(vm: Session) -> None:
    """Before ``lvconvert`` (step 1): SIGINT and SIGTERM roll the mark back themselves; a
    SIGKILL cannot, and leaves ``pending merge`` over an untouched snapshot (the mark is saved
    first by design), which ``recover`` clears. After it (before the record, step 2): the mark
    stays, LVM has merged, and ``recover`` drops the record. Either way, after recover,
    everything is as the design says: nothing suspended, the origin rolled back or untouched."""
    make_vg(vm)
    _snapshot_then_change(vm)
    total = _steps(snapkit(vm, *MERGE, "--dry-run").stdout.decode())
    assert total == 1
    before = fingerprint(vm)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        code = paused(vm, MERGE, "1", signum)
        assert code in (128 + signum, -signal.SIGKILL), code
        unblocked_devices(vm)
        if signum == signal.SIGKILL:
            assert _pending(vm) == {"s1": "merge"}  # saved before lvconvert: never run
            _refused_with_the_way_out(vm)
        else:
            assert fingerprint(vm) == before, signum
        recovered = snapkit(vm, "recover").stdout.decode()
        if signum == signal.SIGKILL:
            assert "s1: the merge had not started; kept" in recovered, recovered
        assert fingerprint(vm) == before, signum  # recover settled it: nothing merged
        unblocked_devices(vm)
    code = paused(vm, MERGE, "2", signal.SIGTERM)  # merged by LVM, not yet recorded
    assert code == 128 + signal.SIGTERM
    unblocked_devices(vm)
    assert _pending(vm) == {"s1": "merge"}  # LVM had begun: the mark stays for recover
    _refused_with_the_way_out(vm)
    recovered = snapkit(vm, "recover").stdout.decode()
    assert "s1: the merge had finished" in recovered, recovered
    assert _pending(vm) == {} and snapkit(vm, "snapshot", "list").stdout.strip() == b""
    assert b"s1" not in vm.sh("lvs -a --noheadings -o lv_name vg").stdout
    unblocked_devices(vm)
    assert _marker(vm) == "before"  # the origin is the snapshot


def unblocked_devices(vm: Session) -> None:
    assert b"Suspended" not in vm.sh("dmsetup info -c --noheadings -o suspended").stdout


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_signal_inside_lvconverts_suspend_leaves_nothing_suspended(vm_factory, signum: int) -> None:  # type: ignore[no-untyped-def]
    vm = vm_factory(cpus=2)
    make_vg(vm)
    _snapshot_then_change(vm)
    report = inside_suspend(vm, MERGE, signum, tries=1)  # a merge that ran is not redone
    assert report["returncode"] in (128 + signum, -signal.SIGKILL), report
    unblocked_devices(vm)
    # LVM had begun: a SIGINT keeps the mark (flow._tool_started), a SIGKILL never takes it
    assert _pending(vm) == {"s1": "merge"}
    _refused_with_the_way_out(vm)
    recovered = snapkit(vm, "recover").stdout.decode()  # at once: LVM's merge is left to it
    unblocked_devices(vm)
    deadline = time.monotonic() + 120  # the kernel merges on
    while not re.search(
        rb"snapshot-merge (\d+)/\d+ \1$|^$",
        vm.sh("dmsetup status vg-lv | grep snapshot-merge || true").stdout.strip(),
    ):
        assert time.monotonic() < deadline, vm.sh("lvs -a vg; dmsetup status").stdout
        time.sleep(1)
    if b"s1" in vm.sh("lvs -a --noheadings -o lv_name vg").stdout:
        # lvconvert died with snapkit (its output pipe closed) before LVM dropped the merged
        # snapshot, and recover left LVM's merge alone: merge again finishes it
        assert _pending(vm) == {"s1": "merge"}, recovered
        snapkit(vm, "snapshot", "merge", "s1", "--wait")
    else:  # LVM finished: recover (now, or already above) drops the record
        recovered += snapkit(vm, "recover").stdout.decode()
        assert "s1: the merge had finished" in recovered, recovered
    assert _pending(vm) == {}
    unblocked_devices(vm)
    assert b"s1" not in vm.sh("lvs -a --noheadings -o lv_name vg").stdout
    assert _marker(vm) == "before"  # the origin is the snapshot
    assert vm.run(["e2fsck", "-fn", "/dev/vg/lv"], timeout=300).returncode == 0
    assert snapkit(vm, "snapshot", "list").stdout.strip() == b""


@pytest.mark.slow
def test_sigkill_at_every_step_of_a_btrfs_create_the_watchdog_thaws(vm: Session) -> None:
    """btrfs is not frozen by a dm suspend on 6.1, so the lvm create brackets ``lvcreate``
    with FIFREEZE/FITHAW and a watchdog process; a SIGKILL of snapkit at any step, frozen or
    not, leaves the filesystem writable within --max-freeze. (A probe write on a filesystem
    left frozen never returns: the harness then reports the guest lost, a failure too.)
    The record saved first (``pending create``) is then settled by ``recover``: a snapshot
    ``lvcreate`` made (taken frozen) is kept, a create killed before it is undone."""
    make_vg(vm, "btrfs")
    # 10 s, not 5: the round after the last step runs the whole create, and on a loaded TCG
    # host lvcreate alone once held the freeze past 5 s, so the watchdog (rightly) refused it.
    # The bound under test is the same: writable again within --max-freeze of the kill.
    args = [*CREATE, "--max-freeze", str(MAX_FREEZE)]
    plan = snapkit(vm, *args, "--dry-run").stdout.decode()
    total, lvcreate = _steps(plan), _step_of(plan, "lvcreate")
    assert total >= 5  # watchdog, freeze, lvcreate, thaw, stop
    for step in range(1, total + 2):
        assert paused(vm, args, str(step), signal.SIGKILL) == -signal.SIGKILL
        # From the kill (paused() returns as the killed process is reaped), not from the
        # spawn: snapkit's start-up to the pause is no part of the watchdog's bound, and under
        # a loaded TCG host it alone took 17 s once (the probe below still returned in < 7 s).
        killed_at = time.monotonic()
        unblocked(vm, within=MAX_FREEZE + 2)
        assert time.monotonic() - killed_at < MAX_FREEZE + 10, step  # + host round trips
        assert _pending(vm) == {"s1": "create"}, step  # recorded before the plan ran
        recovered = snapkit(vm, "recover").stdout.decode()
        unblocked(vm)
        listed = json.loads(snapkit(vm, "snapshot", "list", "--json").stdout)
        lv = vm.sh("lvs --noheadings -o lv_attr vg/s1 2>/dev/null || true").stdout.decode()
        if step > lvcreate:  # lvcreate ran, the filesystem frozen: a whole snapshot, kept
            assert "s1: the create had finished; kept" in recovered, (step, recovered)
            assert [(r["name"], r["state"], r["details"].get("pending")) for r in listed] == [
                ("s1", "active", None)
            ], (step, listed)
            assert lv.strip().startswith("swi-a-s"), (step, lv)
            snapkit(vm, "snapshot", "discard", "s1")
        else:  # killed before lvcreate: undone, cleanly absent
            assert "s1: the create was cut short; undone" in recovered, (step, recovered)
            assert listed == [] and lv.strip() == "", (step, listed, lv)
        assert _pending(vm) == {}, step
        assert b"s1" not in vm.sh("lvs -a --noheadings -o lv_name vg").stdout, step
