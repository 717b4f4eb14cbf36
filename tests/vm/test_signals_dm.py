"""SIGINT (and SIGTERM) at every step of ``create`` and of the rollback-able start of ``merge``,
for dm and dm-direct: the system is left exactly as it was found, and the filesystem still
takes writes (no device left suspended, no loop device or COW file leaked).

The hook ``SNAPKIT_TEST_PAUSE_AT=[P:]N`` (snapkit/flow.py) makes snapkit stop before step N
of its P-th plan and say so on stderr; the test then signals the process group, as a
terminal's Ctrl-C would.
"""

from __future__ import annotations

import re
import signal

import pytest
from workload import (
    COW_DIR,
    fingerprint,
    interrupted_at,
    mount,
    setup_origin,
    snapkit,
    umount,
)

from vmtests.vm.session import Session

CREATE = ["snapshot", "create", "/mnt/o", "--name", "s1", "--cow-dir", COW_DIR, "--cow-size", "32M"]


def _steps(text: str) -> int:
    """How many numbered steps the first plan of a dry run has."""
    first = text.split("then, once")[0]
    return len(re.findall(r"^\s+\d+\. ", first, re.M))


def _writable(vm: Session) -> None:
    vm.run(["sh", "-c", "echo x > /mnt/o/probe && sync"], timeout=30, check=True)


@pytest.mark.parametrize("method", ["dm", "dm-direct"])
def test_signal_at_every_create_step(vm: Session, method: str) -> None:
    setup_origin(vm, "ext4", size="64M")
    args = [*CREATE, "--method", method]
    total = _steps(snapkit(vm, *args, "--dry-run").stdout.decode())
    assert total >= 9
    for step in range(1, total + 1):
        before = fingerprint(vm)
        signum = signal.SIGTERM if step == total else signal.SIGINT
        code = interrupted_at(vm, args, str(step), signum)
        assert code == 128 + signum, (step, code, vm.get("/tmp/err"))
        assert fingerprint(vm) == before, f"step {step}"
        _writable(vm)
    # the hook is a no-op without the variable: the same command then succeeds
    snapkit(vm, *args)


@pytest.mark.parametrize("method", ["dm", "dm-direct"])
def test_signal_at_every_merge_step(vm: Session, method: str) -> None:
    setup_origin(vm, "ext4", size="64M")
    snapkit(vm, *CREATE, "--method", method)
    vm.sh("echo after > /mnt/o/after && sync")
    umount(vm, "/mnt/o")
    total = _steps(snapkit(vm, "snapshot", "merge", "s1", "--dry-run").stdout.decode())
    assert total >= 4
    for step in range(1, total + 1):
        before = fingerprint(vm)
        code = interrupted_at(vm, ["snapshot", "merge", "s1", "--wait"], str(step), signal.SIGINT)
        assert code == 130, (step, code, vm.get("/tmp/err"))
        assert fingerprint(vm) == before, f"step {step}"
    # the finish plan, interrupted at its second step, is completed by running merge again
    code = interrupted_at(vm, ["snapshot", "merge", "s1", "--wait"], "2:2", signal.SIGINT)
    assert code == 130
    snapkit(vm, "snapshot", "merge", "s1", "--wait")
    assert vm.sh("dmsetup ls | wc -l; /sbin/losetup -a | wc -l").stdout == b"1\n1\n"
    mount(vm, "ext4", "/dev/mapper/data", "/mnt/o")
    assert vm.run(["test", "-e", "/mnt/o/after"]).returncode == 1  # rolled back
