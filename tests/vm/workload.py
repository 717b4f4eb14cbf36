"""Host-side helpers for the raw dm method VM tests: an origin, a writer, fsck, and a
fingerprint of everything snapkit could change (tables, loops, mounts, state file, COW dir)."""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass

from vmtests import guest
from vmtests.vm.channel import Process
from vmtests.vm.session import Session

ENV = {"SNAPKIT_STATE_DIR": "/tmp/state"}
COW_DIR = "/tmp/cow"

MKFS = {
    "ext4": "/sbin/mkfs.ext4 -q -F",
    "xfs": "/sbin/mkfs.xfs -q -f",
    "btrfs": "/sbin/mkfs.btrfs -q -f",
}
FSCK = {
    "ext4": ["/sbin/e2fsck", "-fn"],
    "xfs": ["/sbin/xfs_repair", "-n"],
    "btrfs": ["/usr/bin/btrfs", "check", "--readonly"],
}


@dataclass(frozen=True)
class Origin:
    fs: str
    loop: str
    table: str  # dmsetup table of the prepared device, to compare after merge/discard


def snapkit(vm: Session, *args: str, check: bool = True, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    result = vm.run(["snapkit", *args], env={**ENV, **(env or {})}, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snapkit {' '.join(args)} exited {result.returncode}: "
            f"{result.stderr.decode(errors='replace')}"
        )
    return result


def setup_origin(vm: Session, fs: str, size: str = "512M", name: str = "data") -> Origin:
    """A sparse image on a loop device, prepared as /dev/mapper/NAME, formatted, mounted."""
    loop = (
        vm.sh(
            f"modprobe {fs} 2>/dev/null || true; mkdir -p /mnt/o /mnt/s {COW_DIR}; "
            f"truncate -s {size} /tmp/base.img; /sbin/losetup -f --show /tmp/base.img"
        )
        .stdout.decode()
        .strip()
    )
    snapkit(vm, "device", "prepare", loop, "--name", name)
    vm.sh(f"{MKFS[fs]} /dev/mapper/{name} >/dev/null")
    mount(vm, fs, f"/dev/mapper/{name}", "/mnt/o")
    table = vm.sh(f"dmsetup table {name}").stdout.decode()
    return Origin(fs, loop, table)


def mount(vm: Session, fs: str, device: str, point: str) -> None:
    vm.sh(f"/bin/mount -t {fs} {device} {point}")


def umount(vm: Session, point: str) -> None:
    vm.sh(f"/bin/umount {point}")


def start_writer(vm: Session, directory: str = "/mnt/o/w") -> Process:
    vm.sh("rm -f /tmp/stop /tmp/ledger")
    proc = vm.spawn(guest.command("writer", "write", directory, "/tmp/ledger", "/tmp/stop"))
    wait_ledger(vm, 3)
    return proc


def ledger(vm: Session) -> int:
    result = vm.run(["sh", "-c", "cat /tmp/ledger 2>/dev/null | wc -l"])
    return int(result.stdout.decode().strip() or 0)


def wait_ledger(vm: Session, count: int, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while (n := ledger(vm)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"the writer acknowledged only {n} of {count} writes")
        time.sleep(0.2)
    return n


def wait_said(vm: Session, path: str, text: bytes, timeout: float = 120.0) -> None:
    """Wait until a background command has written ``text`` into ``path`` (its output file):
    on a loaded TCG host its start-up alone can take many seconds."""
    deadline = time.monotonic() + timeout
    while text not in vm.run(["sh", "-c", f"cat {shlex.quote(path)} 2>/dev/null"]).stdout:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never said {text!r}")
        time.sleep(0.2)


def stop_writer(vm: Session, proc: Process) -> int:
    vm.sh("touch /tmp/stop")
    result = proc.wait(120)
    assert result.returncode == 0, result.stderr
    return ledger(vm)


def manifest(vm: Session, directory: str) -> dict[str, str]:
    return dict(
        json.loads(vm.sh(shlex.join(guest.command("writer", "manifest", directory))).stdout)
    )


def check_files(vm: Session, directory: str, acknowledged: int) -> int:
    """Every acknowledged file is intact; returns the highest file number present."""
    result = vm.run(guest.command("writer", "check", directory, str(acknowledged)))
    assert result.returncode == 0, result.stderr.decode()
    return int(result.stdout.decode())


def fsck(vm: Session, fs: str, device: str) -> None:
    result = vm.run([*FSCK[fs], device], timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")


def fingerprint(vm: Session, loop: str = "/dev/loop0") -> str:
    """Everything a snapkit command could change, as one text to compare before and after."""
    return vm.sh(
        "echo '# tables'; dmsetup table 2>&1 | sort; echo '# info'; "
        "dmsetup info -c --noheadings -o name,uuid,attr 2>&1 | sort; "
        "echo '# loops'; /sbin/losetup -a | sort; echo '# mounts'; cat /proc/mounts; "
        f"echo '# ro'; blockdev --getro {loop}; echo '# cow'; ls -A {COW_DIR}; "
        "echo '# state'; cat /tmp/state/state.json 2>/dev/null || echo none"
    ).stdout.decode()


__all__ = [
    "COW_DIR",
    "ENV",
    "Origin",
    "check_files",
    "fingerprint",
    "fsck",
    "ledger",
    "manifest",
    "mount",
    "setup_origin",
    "snapkit",
    "start_writer",
    "stop_writer",
    "umount",
    "wait_ledger",
]


def paused_at(vm: Session, args: list[str], pause: str) -> Process:
    """Run snapkit ARGS (stderr in /tmp/err) and return once the flow's test hook has stopped
    it before plan step ``pause`` (``[P:]N``)."""
    env = " ".join(f"{k}={v}" for k, v in {**ENV, "SNAPKIT_TEST_PAUSE_AT": pause}.items())
    # The previous round's "test pause" line must not be mistaken for this one's: until the new
    # shell truncates /tmp/err, a poll would see it and signal a snapkit still starting up.
    vm.run(["rm", "-f", "/tmp/err"], check=True)
    proc = vm.spawn(["sh", "-c", f"exec env {env} snapkit {' '.join(args)} 2>/tmp/err"])
    deadline = time.monotonic() + 120
    while vm.run(["grep", "-q", "test pause", "/tmp/err"]).returncode != 0:
        assert time.monotonic() < deadline, vm.get("/tmp/err")
        time.sleep(0.1)
    return proc


def interrupted_at(vm: Session, args: list[str], pause: str, signum: int) -> int:
    """Run snapkit ARGS, let the flow's test hook stop it before plan step ``pause``
    (``[P:]N``), send ``signum`` there, and return its exit code; a rollback that says it was
    incomplete fails the caller's test at once."""
    proc = paused_at(vm, args, pause)
    proc.signal(signum)
    result = proc.wait(180)
    assert b"rollback incomplete" not in vm.get("/tmp/err"), vm.get("/tmp/err")
    return result.returncode
