"""The Python API in a real guest, through the API alone: the README's example runs as written
(read from README.md here, so the two cannot drift) -- a throwaway snapshot mounted and
discarded by its ``with`` block, one kept, its status, a refusal, mount and umount, and a merge
with wait and a progress callback that rolls the origin back -- and a ``with`` block whose body
raises still unmounts and discards its snapshot.

The example assumes what a user of the dm method has once done: a device prepared with
``snapkit device prepare`` under ``/dev/mapper/srv``, formatted and mounted on ``/srv``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from workload import ENV, snapkit  # tests/vm is on sys.path (rootdir-relative, no package)

from vmtests.vm.session import Session

README = Path(__file__).resolve().parents[2] / "README.md"
PYTHON_ENV = {**ENV, "PYTHONPATH": "/src"}


def readme_example() -> str:
    """The first python block of the README's "The Python API" section, as written."""
    section = README.read_text().split("\n## The Python API\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "README.md's 'The Python API' section has no python example"
    return found.group(1)


def _python(vm: Session, code: str) -> str:
    vm.put("/tmp/snippet.py", code.encode())
    result = vm.run(["python3", "/tmp/snippet.py"], env=PYTHON_ENV, timeout=300)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()


def _prepared_srv(vm: Session) -> str:
    """/dev/mapper/srv over a loop device, ext4, mounted on /srv with a file config: v1."""
    loop = vm.sh("truncate -s 256M /tmp/srv.img; /sbin/losetup -f --show /tmp/srv.img")
    snapkit(vm, "device", "prepare", loop.stdout.decode().strip(), "--name", "srv")
    vm.sh(
        "/sbin/mkfs.ext4 -q -F /dev/mapper/srv; mkdir -p /srv /mnt/snap; "
        "/bin/mount -t ext4 /dev/mapper/srv /srv; echo v1 > /srv/config; sync"
    )
    return vm.sh("dmsetup table srv").stdout.decode()


def _settled(vm: Session, table: str) -> None:
    """No snapshot recorded or left in the kernel, nothing mounted of one, the origin linear."""
    assert json.loads(snapkit(vm, "snapshot", "list", "--json").stdout) == []
    assert vm.sh("dmsetup table srv").stdout.decode() == table
    assert vm.sh("dmsetup ls").stdout.decode().split()[::2] == ["srv"]
    assert b" /mnt/snap " not in vm.sh("cat /proc/mounts").stdout
    assert vm.sh("ls -A /tmp/state/cow 2>/dev/null || true").stdout == b""


def test_the_readme_example_runs_as_written(vm: Session) -> None:
    table = _prepared_srv(vm)
    out = _python(vm, readme_example()).splitlines()
    merged = [line for line in out if line.startswith("merged ")]
    assert [line for line in out if not line.startswith("merged ")] == [
        "backing up ['config']",
        "state: active",
        "refused: the name 'before-upgrade' is already in use -- choose another --name",
        "snapshots: ['before-upgrade']",  # the with block's snapshot is gone already
        "snapshot has: v1",
        "/srv has: v1",  # rolled back
    ], out
    assert merged and merged[-1] == "merged 100%", out
    _settled(vm, table)


RAISING = """
import snapkit

class Boom(Exception):
    pass

try:
    with snapkit.snapshot("/srv", name="tmp", method="dm") as snap:
        print(snap.mount("/mnt/snap"), snap.status().state)
        raise Boom
except Boom:
    print("after:", snapkit.list_snapshots())
"""


def test_a_with_block_that_raises_still_unmounts_and_discards(vm: Session) -> None:
    table = _prepared_srv(vm)
    assert _python(vm, RAISING) == "/mnt/snap active\nafter: []\n"
    _settled(vm, table)
    assert vm.sh("cat /srv/config").stdout == b"v1\n"
