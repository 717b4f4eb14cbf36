"""Bad input, in a real guest: each is refused with one line on stderr and the right exit code
(2 usage, 1 refusal), and ``dmsetup table``, ``losetup -a``, /proc/mounts, the COW directory
and the state file are byte-identical before and after."""

from __future__ import annotations

from workload import COW_DIR, fingerprint, setup_origin, snapkit

from vmtests.vm.session import Session

CREATE = ["snapshot", "create", "/mnt/o", "--cow-dir", COW_DIR, "--cow-size", "16M"]

CASES: list[tuple[str, list[str], int, str]] = [
    (
        "cow on the origin",
        [*CREATE, "--name", "x", "--cow-dir", "/mnt/o/cow"],
        1,
        "on the filesystem being snapshotted",
    ),
    ("cow below 3 chunks", [*CREATE, "--name", "x", "--cow-size", "8K"], 1, "three"),
    ("cow size garbage", [*CREATE, "--name", "x", "--cow-size", "lots"], 1, "size"),
    ("bad chunk", [*CREATE, "--name", "x", "--chunk-size", "3K"], 1, "chunk size"),
    ("space in name", [*CREATE, "--name", "a b"], 1, "contains"),
    ("newline in name", [*CREATE, "--name", "a\nb 0 8 zero"], 1, "contains"),
    ("control char", [*CREATE, "--name", "a\x01b"], 1, "contains"),
    ("slash in name", [*CREATE, "--name", "a/b"], 1, "contains"),
    ("long name", [*CREATE, "--name", "n" * 200], 1, "long"),
    ("name of a snapshot", [*CREATE, "--name", "s1"], 1, "in use"),
    ("name of a dm device", [*CREATE, "--name", "data"], 1, "in use"),
    (
        "not linear",
        ["snapshot", "create", "/dev/mapper/z", "--name", "x", "--cow-dir", COW_DIR],
        1,
        "zero table",
    ),
    (
        "dm-direct on a snapshot-origin",
        [*CREATE, "--name", "x", "--method", "dm-direct"],
        1,
        "snapshot-origin table",
    ),
    ("unknown device", ["snapshot", "create", "/dev/nope", "--name", "x"], 1, "neither"),
    ("a plain file", ["snapshot", "create", "/tmp/base.img", "--name", "x"], 1, "neither"),
    (
        "not a dm device",
        ["snapshot", "create", "/dev/loop0", "--name", "x", "--cow-dir", COW_DIR],
        1,
        "device prepare",
    ),
    ("unknown method", [*CREATE, "--name", "x", "--method", "hammer2"], 2, "invalid choice"),
    ("no name", CREATE, 2, "--name"),
    ("merge while mounted", ["snapshot", "merge", "s1"], 1, "unmount /mnt/o"),
    ("status of nothing", ["snapshot", "status", "nope"], 1, "no snapshot"),
    ("discard of nothing", ["snapshot", "discard", "nope"], 1, "no snapshot"),
    (
        "prepare a mounted device",
        ["device", "prepare", "/dev/mapper/data", "--name", "y"],
        1,
        "already a device-mapper",
    ),
    ("prepare taken name", ["device", "prepare", "/dev/loop1", "--name", "data"], 1, "in use"),
    (
        "prepare a file",
        ["device", "prepare", "/tmp/base.img", "--name", "y"],
        1,
        "not a block device",
    ),
    ("release with snapshots", ["device", "release", "data"], 1, "has snapshots"),
    ("release of another's", ["device", "release", "z"], 1, "not a device snapkit prepared"),
]


def test_bad_inputs_change_nothing(vm: Session) -> None:
    setup_origin(vm, "ext4", size="64M")
    vm.sh(
        "dmsetup create z --table '0 2048 zero'; truncate -s 8M /tmp/other.img; "
        "/sbin/losetup -f /tmp/other.img"
    )
    snapkit(vm, *CREATE, "--name", "s1")
    before = fingerprint(vm)
    failures = []
    for label, args, code, words in CASES:
        result = snapkit(vm, *args, check=False)
        err = result.stderr.decode(errors="replace")
        if result.returncode != code or words not in err or err.count("\n") != 1:
            failures.append(f"{label}: exit {result.returncode}, stderr {err!r}")
        if fingerprint(vm) != before:
            failures.append(f"{label}: changed the system")
    assert not failures, "\n".join(failures)


def test_a_refusal_is_caught_by_the_fingerprint(vm: Session) -> None:
    """Negative control: a command that does change something must show in the fingerprint."""
    setup_origin(vm, "ext4", size="64M")
    before = fingerprint(vm)
    snapkit(vm, *CREATE, "--name", "s1")
    assert fingerprint(vm) != before
