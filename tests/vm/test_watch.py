"""``snapkit snapshot watch`` (issue 4, item 6) in a real guest: a writer outruns a small dm
COW. Without watch the kernel invalidates the snapshot (the negative control, and watch then
says so and exits 1); with ``watch --extend-at 50 --extend-by 32M`` the same load fits, the
COW's size as the kernel reports it has grown, and the snapshot is still fsck-clean."""

from __future__ import annotations

import json
import signal

from workload import COW_DIR, ENV, setup_origin, snapkit, wait_said

from vmtests.vm.session import Session

WRITE = (
    "for i in $(seq 1 24); do dd if=/dev/urandom of=/mnt/o/{tag}$i bs=1M count=1 conv=fsync "
    "2>/dev/null; sleep 0.3; done"
)
COW_SECTORS = (8 << 20) // 512


def _create(vm: Session, name: str) -> None:
    snapkit(
        vm,
        "snapshot",
        "create",
        "/mnt/o",
        "--name",
        name,
        "--method",
        "dm",
        "--cow-dir",
        COW_DIR,
        "--cow-size",
        "8M",
    )


def _state(vm: Session, name: str) -> str:
    shown = snapkit(vm, "snapshot", "status", name, "--json").stdout
    return str(json.loads(shown)["state"])


def _cow_total(vm: Session, name: str) -> int:
    """Y of the snapshot's ``X/Y Z`` status: the COW size the kernel sees, in sectors."""
    fields = vm.sh(f"dmsetup status {name}").stdout.decode().split()
    return int(fields[3].split("/")[1])


def test_watch_keeps_a_small_cow_from_overflowing(vm: Session) -> None:
    setup_origin(vm, "ext4", size="160M")
    # without watch: the same load overflows the 8M COW
    _create(vm, "s1")
    vm.sh(WRITE.format(tag="a"), timeout=600)
    assert _state(vm, "s1") == "invalid"
    told = snapkit(
        vm,
        "snapshot",
        "watch",
        "s1",
        "--extend-at",
        "50",
        "--extend-by",
        "32M",
        "--once",
        check=False,
    )
    assert told.returncode == 1 and b"is lost" in told.stderr, told.stderr
    snapkit(vm, "snapshot", "discard", "s1", "--force")
    # with watch
    _create(vm, "s2")
    assert _cow_total(vm, "s2") == COW_SECTORS
    env = " ".join(f"{k}={v}" for k, v in ENV.items())
    args = "--extend-at 50 --extend-by 32M --interval 0.2"
    out = ">/tmp/watch.out 2>/tmp/watch.err"
    watch = vm.spawn(["sh", "-c", f"exec env {env} snapkit snapshot watch s2 {args} {out}"])
    wait_said(vm, "/tmp/watch.out", b"watching s2")  # on guard before the writes
    vm.sh(WRITE.format(tag="b"), timeout=600)
    assert _state(vm, "s2") == "active", vm.get("/tmp/watch.err")
    assert _cow_total(vm, "s2") > COW_SECTORS
    assert b"grew it by" in vm.get("/tmp/watch.out")
    watch.signal(signal.SIGTERM)
    watch.wait(60)
    check = vm.run(["e2fsck", "-fn", "/dev/mapper/s2"], timeout=300)
    assert check.returncode == 0, check.stdout.decode()
    assert not vm.sh("dmsetup info -c --noheadings -o suspended").stdout.count(b"Suspended")
