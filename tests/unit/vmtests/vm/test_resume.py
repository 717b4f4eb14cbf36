"""Saved states: what keys them, and what a parked boot carries (nothing of a later boot's)."""

from __future__ import annotations

import base64
import dataclasses
import struct
from pathlib import Path

import pytest

from tests.unit.vmtests.vm.test_cpio import read_newc
from vmtests.vm import payload, resume
from vmtests.vm.qemu import Accel, Disk, DiskFormat


def shape(**overrides: object) -> resume.Shape:
    base = resume.Shape(
        image_key="u+k",
        park=b"park",
        qemu="/usr/bin/qemu 1 2",
        accel=Accel.TCG,
        machine="microvm",
        memory_mib=1024,
        cpus=1,
        disks=((1 << 30, False),),
        tree_bytes=16 << 20,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_every_field_of_the_shape_changes_the_key() -> None:
    changes = {
        "image_key": "u+k2",
        "park": b"park2",
        "qemu": "/usr/bin/qemu 1 3",
        "accel": Accel.KVM,
        "machine": "q35",
        "memory_mib": 2048,
        "cpus": 2,
        "disks": ((1 << 30, True),),
        "tree_bytes": 32 << 20,
    }
    keys = {shape().key()} | {shape(**{k: v}).key() for k, v in changes.items()}
    assert len(keys) == len(changes) + 1
    assert shape(disks=()).key() != shape(disks=((1 << 30, False),) * 2).key()
    assert shape().key() == shape().key()


def test_serials_formats_and_contents_do_not_key_a_state(tmp_path: Path) -> None:
    """The restored guest relinks serials and re-reads each disk, so only sizes and flags count."""
    raw = tmp_path / "a.raw"
    raw.write_bytes(b"x" * 4096)
    other = tmp_path / "b.raw"
    with other.open("wb") as f:
        f.truncate(4096)
    a, b = (
        resume.shape_of(
            "k",
            b"p",
            accel=Accel.TCG,
            machine="microvm",
            memory_mib=1,
            cpus=1,
            disks=[disk],
            tree_bytes=16 << 20,
        )
        for disk in (Disk(raw, "disk0"), Disk(other, "out", DiskFormat.RAW))
    )
    assert a.key() == b.key()


def test_disk_bytes_reads_a_qcow2_virtual_size(tmp_path: Path) -> None:
    q = tmp_path / "d.qcow2"
    q.write_bytes(b"QFI\xfb" + b"\0" * 20 + struct.pack(">Q", 5 << 30) + b"\0" * 64)
    assert resume.disk_bytes(Disk(q, "d", DiskFormat.QCOW2)) == 5 << 30
    q.write_bytes(b"nope" * 16)
    with pytest.raises(ValueError):
        resume.disk_bytes(Disk(q, "d", DiskFormat.QCOW2))


def test_placeholders_have_the_shapes_sizes_and_flags(tmp_path: Path) -> None:
    tree, disks = resume.placeholders(shape(disks=((1 << 20, False), (2 << 20, True))), tmp_path)
    assert [(resume.disk_bytes(d), d.readonly) for d in disks] == [
        (1 << 20, False),
        (2 << 20, True),
    ]
    assert (resume.disk_bytes(tree), tree.readonly, tree.serial) == (16 << 20, True, "vmtest-tree")
    assert tree.path.read_bytes().count(0) == 16 << 20  # blank: no tree of any boot
    assert len({d.serial for d in [tree, *disks]}) == 3


def test_the_parked_payload_holds_no_tree_command_or_environment() -> None:
    p = payload.Payload(payload.Mode.EXEC, ("secret-command",), env={"SECRET": "v"}, resumed=True)
    parked = payload.build_park(p)
    assert b"secret-command" not in parked and b"SECRET" not in parked
    assert b"src/snapkit" not in parked
    assert b"vmtest-park/park.py" in parked
    # the port list is the same for the parked boot and every restored one
    assert p.ports[0] == payload.CONTROL_PORT and f"{' '.join(p.ports)}\n".encode() in parked


def test_the_restored_payload_carries_this_boots_files_but_no_tree_or_init() -> None:
    p = payload.Payload(payload.Mode.EXEC, ("true", "a b\n"), hostname="h1", resumed=True)
    files = {k: base64.b64decode(v) for k, v in payload.resumed_files(p).items()}
    assert files["vmtest/argv/00000"] == b"true" and files["vmtest/argv/00001"] == b"a b\n"
    assert files["vmtest/hostname"] == b"h1\n" and files["vmtest/mode"] == b"exec\n"
    assert not [name for name in files if not name.startswith("vmtest/")]
    # a cold boot's archive holds the same files, and the tree and the init besides
    cold = {m.name: m.data for m in read_newc(payload.build(dataclasses.replace(p, resumed=False)))}
    assert {"init", "src/snapkit/__init__.py"} <= cold.keys()
    assert {k: v for k, v in cold.items() if k in files and k != "vmtest/ports"} == {
        k: v for k, v in files.items() if k != "vmtest/ports"
    }


def test_cold_boot_is_asked_for_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(resume.COLD_ENV, raising=False)
    assert not resume.cold_requested()
    monkeypatch.setenv(resume.COLD_ENV, "1")
    assert resume.cold_requested()
