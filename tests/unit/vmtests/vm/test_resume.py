"""Saved states: what keys them, and what a parked boot carries (nothing of a later boot's)."""

from __future__ import annotations

import base64
import dataclasses
import socket
import struct
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from tests.unit.vmtests.vm.test_cpio import read_newc
from vmtests.vm import machine as machine_mod
from vmtests.vm import payload, resume, treedisk
from vmtests.vm.errors import ImageError
from vmtests.vm.machine import Machine
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


# -- which boot a Machine makes: restored, saved first, or cold (and why) ------------------------


class Booted:
    """Stands in for QEMU: records what each launch was asked to boot."""

    def __init__(self) -> None:
        self.launches: list[str] = []

    def launch(self, vm: Machine, initrd: bytes | None, **kwargs: object) -> None:
        if kwargs.get("incoming"):
            self.launches.append("restore")
        else:  # nothing of a failed restore's: no tree disk, no saved RAM
            assert vm.tree_disk is None and vm.memory_file is None
            self.launches.append("cold")
        vm._sockdir = "/nonexistent"
        vm.ports[payload.CONTROL_PORT] = None  # type: ignore[assignment]


@pytest.fixture
def booted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Booted:
    b = Booted()
    monkeypatch.delenv(resume.COLD_ENV, raising=False)
    monkeypatch.setenv("SNAPKIT_IMAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(Machine, "_launch", lambda vm, initrd, **kw: b.launch(vm, initrd, **kw))
    monkeypatch.setattr(Machine, "close", lambda vm: None)
    tree = tmp_path / "tree.squashfs"
    with tree.open("wb") as f:
        f.truncate(16 << 20)
    monkeypatch.setattr(treedisk, "disk", lambda _: Disk(tree, treedisk.SERIAL, readonly=True))
    monkeypatch.setattr(resume, "Qmp", lambda *a: types.SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(resume, "migrate_from", lambda *a: None)
    monkeypatch.setattr(resume, "hand_over", lambda *a: None)
    monkeypatch.setattr(resume, "_SAID", set())
    return b


def _machine(tmp_path: Path, **kwargs: Any) -> Machine:
    image = types.SimpleNamespace(
        key="u+k",
        kernel=tmp_path / "k",
        rootfs=tmp_path / "r",
        modules_disk=tmp_path / "m",
        initramfs_bytes=lambda: b"base",
    )
    p = payload.Payload(payload.Mode.EXEC, ("true",))
    return Machine(image, p, tmp_path / "work", **kwargs)  # type: ignore[arg-type]


def _saved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    state = tmp_path / "saved" / resume.STATE
    state.parent.mkdir()
    monkeypatch.setattr(resume, "state_file", lambda shape: state)
    return state


def test_a_saved_state_is_restored(
    booted: Booted, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _saved(monkeypatch, tmp_path)
    vm = _machine(tmp_path)
    vm.start()
    assert booted.launches == ["restore"] and vm.restored
    assert vm.memory_file == tmp_path / "saved" / resume.RAM and not vm.memory_shared


def test_a_missing_state_is_saved_first_then_restored(
    booted: Booted, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(resume, "state_file", lambda shape: None)
    saved: list[resume.Shape] = []

    def save(vm: Machine, shape: resume.Shape) -> Path:
        saved.append(shape)
        return tmp_path / "new" / resume.STATE

    monkeypatch.setattr(machine_mod, "save_state", save)
    vm = _machine(tmp_path)
    vm.start()
    assert booted.launches == ["restore"] and vm.restored
    assert saved[0].tree_bytes == 16 << 20 and saved[0].memory_mib == 1024


@pytest.mark.parametrize("asked", ["argument", "environment"])
def test_a_cold_boot_when_asked_touches_no_state(
    booted: Booted, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, asked: str
) -> None:
    monkeypatch.setattr(resume, "state_file", lambda shape: pytest.fail("looked for a state"))
    if asked == "environment":
        monkeypatch.setenv(resume.COLD_ENV, "1")
    vm = _machine(tmp_path, cold_boot=asked == "argument")
    vm.start()
    assert booted.launches == ["cold"] and not vm.restored


def test_a_restore_that_fails_deletes_the_state_says_why_once_and_boots_cold(
    booted: Booted,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = _saved(monkeypatch, tmp_path)
    discarded: list[resume.Shape] = []
    monkeypatch.setattr(resume, "discard", discarded.append)

    def refuse(*a: object) -> None:
        raise resume.RestoreFailed("the control port closed: QEMU did not restore the state")

    monkeypatch.setattr(resume, "hand_over", refuse)
    for _ in range(2):
        vm = _machine(tmp_path)
        vm.start()
        assert not vm.restored
    assert booted.launches == ["restore", "cold"] * 2
    assert len(discarded) == 2
    err = capsys.readouterr().err
    assert err.count("vmtest: booting cold: the saved state") == 1  # once per process and reason
    assert f"{state.parent.name} failed (the control port closed" in err


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (resume.RestoreFailed("cannot save a state to restore: Kernel panic"), "Kernel panic"),
        (OSError(28, "No space left on device"), "[Errno 28] No space left on device"),
    ],
    ids=["save-boot-failed", "full-cache"],
)
def test_a_state_that_cannot_be_saved_boots_cold_and_deletes_nothing(
    booted: Booted,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    said: str,
) -> None:
    monkeypatch.setattr(resume, "state_file", lambda shape: None)

    def cannot(vm: Machine, shape: resume.Shape) -> Path:
        raise error

    monkeypatch.setattr(machine_mod, "save_state", cannot)
    monkeypatch.setattr(resume, "discard", lambda shape: pytest.fail("deleted a state"))
    vm = _machine(tmp_path)
    vm.start()
    assert booted.launches == ["cold"] and not vm.restored
    assert f"booting cold: cannot save a state to restore: {said}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error",
    [ImageError("mksquashfs failed (exit 1)"), OSError(28, "No space left on device")],
    ids=["tool", "full-cache"],
)
def test_a_tree_disk_that_cannot_be_made_boots_cold(
    booted: Booted,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
) -> None:
    def broken(_: Path) -> Disk:
        raise error

    monkeypatch.setattr(treedisk, "disk", broken)
    vm = _machine(tmp_path)
    vm.start()
    assert booted.launches == ["cold"]
    assert f"cannot make the tree disk: {error}" in capsys.readouterr().err


@pytest.mark.parametrize("guest", ["closes", "says nonsense", "resets"])
def test_a_hand_over_that_goes_wrong_is_a_restore_failure(guest: str) -> None:
    """Whatever way QEMU or the guest lets the hand-over down, it is RestoreFailed (the
    caller's cue to delete the state and boot cold), never another exception."""
    host, other = socket.socketpair()

    def play() -> None:
        if guest == "resets":  # unread bytes at close make the host's next recv a reset
            other.recv(1)
            other.close()
            return
        other.makefile("rb").readline()
        if guest == "says nonsense":
            other.sendall(b"nonsense\n")
        other.close()

    t = threading.Thread(target=play)
    t.start()
    with host, pytest.raises(resume.RestoreFailed):
        resume.hand_over(host, {"vmtest/mode": "ZXhlYwo="}, timeout=5)
    t.join()
