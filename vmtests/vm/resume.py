"""Saved states: boot a guest once, save it where it waits for work, restore it for every boot.

Under TCG a cold boot costs about two seconds, nearly all of it the same in every boot (QEMU
loading the kernel, the kernel's own initialisation, our init). So a guest is booted once per
*shape* up to the point where it waits for its payload (vmtests/guest/park.py, PID 1 in the
final root), and saved with QEMU's migration over QMP: its RAM lives in a shared memory file
(qemu.py), so with x-ignore-shared the state itself holds only the devices. Every later boot of
that shape starts QEMU with ``-incoming defer``, maps that RAM file copy-on-write, starts the
restore over QMP (``migrate-incoming``) and hands the guest, over the control port, what a cold
boot would have found in its initramfs: this boot's files (command, environment, mode,
hostname), the host's clock and fresh entropy. The tree comes on a disk of its own
(vmtests.vm.treedisk), which park.py mounts at /src.

The shape, which keys the cache entry, is everything the saved guest has seen and cannot see
change: the image (userland + kernel layer), the parked payload (init.sh, park.py, the port
names), the QEMU binary, accelerator, machine type, memory, vCPUs, the tree disk's size class
and the per-boot disks' count, sizes and read-only flags (the kernel reads a virtio disk's
capacity once, at probe). Not their serials, formats or contents: park.py drops every per-boot
disk's cached blocks and partitions after a restore and relinks /dev/vmtest/<serial> from the
disks QEMU now has. Not the host's TSC rate either (it only seeds the saved boot's calibration,
and /proc/cpuinfo's "cpu MHz" drifts, which would re-save the state again and again).

Entries live beside the images (``state-<key>/``: ``state``, ``ram``, ``meta.json``), built
aside and renamed in under a per-key lock like every cache entry, so parallel workers save a
shape once. A state is *stale* when anything of its shape changed: its key is then another, so
it is simply not found, and saving the new one removes the states not used for a day
(cache.prune). A state that fails to restore is deleted by the caller (vmtests.vm.machine),
which says why once and boots cold.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shlex
import shutil
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vmtests.vm import cache, treedisk
from vmtests.vm.errors import VmError
from vmtests.vm.qemu import Accel, Disk, DiskFormat

STATE_VERSION = "2"  # bumped when what a saved state holds changes
STATE, RAM = "state", "ram"  # an entry's files: the devices' state, the guest's RAM (qemu.py)
IGNORE_SHARED = "x-ignore-shared"  # the migration capability that leaves RAM files out
COLD_ENV = "VMTEST_COLD_BOOT"  # "1": every boot is a cold boot (--cold-boot, --vm-cold-boot)
SAVE_TIMEOUT_S = 180.0  # a cold boot under load, plus writing the state
HANDOFF_TIMEOUT_S = 60.0  # restore to "ok": QEMU loading the state, the guest taking its payload
SEED_BYTES = 64


class RestoreFailed(VmError):
    """A saved state could not be restored or saved; the caller boots cold."""


def cold_requested() -> bool:
    """Whether this process was asked for cold boots only (``$VMTEST_COLD_BOOT``)."""
    return os.environ.get(COLD_ENV, "").lower() in ("1", "yes", "true", "on")


def disk_bytes(disk: Disk) -> int:
    """A disk's size as the guest sees it: a raw file's length, a qcow2's virtual size."""
    if disk.format is DiskFormat.QCOW2:
        with disk.path.open("rb") as f:
            head = f.read(32)
        if head[:4] != b"QFI\xfb":
            raise ValueError(f"{disk.path} is not a qcow2 image")
        return int(struct.unpack(">Q", head[24:32])[0])
    return disk.path.stat().st_size


@dataclass(frozen=True)
class Shape:
    """What a saved guest has seen and a restored one cannot change: the cache key's input."""

    image_key: str
    park: bytes  # the parked payload: init.sh, park.py, the port names
    qemu: str  # the QEMU binary: path, size and mtime (a new QEMU may not load an old state)
    accel: Accel
    machine: str
    memory_mib: int
    cpus: int
    disks: tuple[tuple[int, bool], ...]  # (size in bytes, read-only) of each per-boot disk
    tree_bytes: int = 0  # the tree disk's size class (vmtests.vm.treedisk)

    def key(self) -> str:
        h = hashlib.sha256(f"state-version {STATE_VERSION}\n".encode())
        h.update(hashlib.sha256(self.park).hexdigest().encode())
        for field in (self.image_key, self.qemu, self.accel, self.machine):
            h.update(f"\n{field}".encode())
        h.update(f"\n{self.memory_mib} {self.cpus} {list(self.disks)} {self.tree_bytes}\n".encode())
        return h.hexdigest()[:16]


def qemu_identity(binary: str = "qemu-system-x86_64") -> str:
    path = shutil.which(binary) or binary
    try:
        st = os.stat(path)
    except OSError:
        return path
    return f"{os.path.realpath(path)} {st.st_size} {st.st_mtime_ns}"


def shape_of(
    image_key: str,
    park: bytes,
    *,
    accel: Accel,
    machine: str,
    memory_mib: int,
    cpus: int,
    disks: Sequence[Disk],
    tree_bytes: int,
) -> Shape:
    return Shape(
        image_key=image_key,
        park=park,
        qemu=qemu_identity(),
        accel=accel,
        machine=machine,
        memory_mib=memory_mib,
        cpus=cpus,
        disks=tuple((disk_bytes(d), d.readonly) for d in disks),
        tree_bytes=tree_bytes,
    )


def entry_dir(shape: Shape) -> Path:
    return cache.cache_dir() / f"state-{shape.key()}"


def state_file(shape: Shape) -> Path | None:
    """The saved state of this shape (marked used, for cache.prune), or None when there is none
    yet."""
    f = entry_dir(shape) / STATE
    if f.is_file() and (f.parent / RAM).is_file() and (f.parent / "meta.json").is_file():
        cache.touch(f)
        return f
    return None


@contextlib.contextmanager
def lock(shape: Shape):  # type: ignore[no-untyped-def]
    """One lock per shape, so workers wait for the one that saves it, and only for it."""
    with cache.locked(cache.cache_dir() / f".state-{shape.key()}.lock"):
        yield


def discard(shape: Shape) -> None:
    with contextlib.suppress(VmError):
        cache.remove(entry_dir(shape))


def placeholders(shape: Shape, folder: Path) -> tuple[Disk, list[Disk]]:
    """Sparse stand-ins, while a state is saved, for the tree disk and the per-boot disks:
    the same sizes and flags, no contents."""

    def blank(name: str, size: int) -> Path:
        path = folder / f"{name}.raw"
        with path.open("wb") as f:
            f.truncate(size)
        return path

    tree = Disk(blank("tree", shape.tree_bytes), treedisk.SERIAL, readonly=True)
    slots = [
        Disk(blank(f"slot{i}", size), f"vmtest-slot{i}", readonly=ro)
        for i, (size, ro) in enumerate(shape.disks)
    ]
    return tree, slots


# -- QMP: just enough to save ------------------------------------------------------------------


class Qmp:
    """A QMP client for the few commands a save needs (qmp_capabilities, migrate, query-migrate)."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise RestoreFailed("QEMU's QMP socket never appeared") from None
                time.sleep(0.02)
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rwb")
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, object]:
        line = self.file.readline()
        if not line:
            raise RestoreFailed("QEMU closed its QMP socket")
        reply: dict[str, object] = json.loads(line)
        return reply

    def execute(self, command: str, **arguments: object) -> object:
        msg: dict[str, object] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            reply = self._read()
            if "error" in reply:
                raise RestoreFailed(f"QMP {command}: {reply['error']}")
            if "return" in reply:
                return reply["return"]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _ignore_shared(qmp: Qmp) -> None:
    qmp.execute(
        "migrate-set-capabilities", capabilities=[{"capability": IGNORE_SHARED, "state": True}]
    )


def migrate_to(qmp: Qmp, out: Path, timeout: float) -> None:
    """Save the running guest to ``out``, all but its RAM, which is already in its shared
    memory file. Live, not after ``stop``: a state saved from a stopped VM restores stopped,
    and resuming it would cost a QMP round trip per boot."""
    _ignore_shared(qmp)
    qmp.execute("migrate", uri=f"exec:cat > {shlex.quote(str(out))}")
    deadline = time.monotonic() + timeout
    while True:
        info = qmp.execute("query-migrate")
        status = info.get("status") if isinstance(info, dict) else None
        if status == "completed":
            return
        if status in ("failed", "cancelled") or time.monotonic() > deadline:
            raise RestoreFailed(f"saving the guest's state ended {status}: {info}")
        time.sleep(0.05)


def migrate_from(qmp: Qmp, state: Path) -> None:
    """Start restoring ``state`` into a QEMU waiting with ``-incoming defer`` (its RAM mapped
    from the entry's memory file); the guest runs as soon as the devices are loaded."""
    _ignore_shared(qmp)
    # exec: rather than file:, which QEMU 7.2 lacks; the path is quoted for its sh -c.
    qmp.execute("migrate-incoming", uri=f"exec:cat {shlex.quote(str(state))}")


# -- the hand-over after a restore ---------------------------------------------------------------


def _line(sock: socket.socket, deadline: float) -> bytes:
    out = bytearray()
    while not out.endswith(b"\n"):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            b = sock.recv(1)
        except TimeoutError:
            raise RestoreFailed("the restored guest did not answer in time") from None
        except OSError as exc:  # a reset: QEMU ended while the port was open
            raise RestoreFailed(f"the control port failed ({exc.strerror}): QEMU ended") from None
        if not b:
            raise RestoreFailed("the control port closed: QEMU did not restore the state")
        out += b
    return bytes(out[:-1])


def wait_parked(sock: socket.socket, timeout: float) -> None:
    got = _line(sock, time.monotonic() + timeout)
    if got != b"parked":
        raise RestoreFailed(f"expected the guest to park, it said {got!r}")


def hand_over(
    sock: socket.socket, files: dict[str, str], timeout: float = HANDOFF_TIMEOUT_S
) -> None:
    """Give a restored guest this boot's files (payload.resumed_files) and a fresh seed, then
    the host's clock when it asks, and wait for it to confirm (clock set, entropy pool
    re-seeded, disks re-read, tree mounted): the protocol of vmtests/guest/park.py. Waiting
    costs the guest nothing (it goes on to stage2.sh), and a restore that fails is then known
    before the boot is used, so the caller can still boot cold."""
    deadline = time.monotonic() + timeout
    header = {"seed": secrets.token_bytes(SEED_BYTES).hex(), "files": files}
    try:
        sock.sendall(json.dumps(header).encode() + b"\n")
    except OSError as exc:
        raise RestoreFailed(f"cannot send this boot's files: {exc}") from None
    if (got := _line(sock, deadline)) != b"clock":
        raise RestoreFailed(f"the restored guest said {got!r}, not 'clock'")
    try:
        sock.sendall(f"{time.time_ns()}\n".encode())
    except OSError as exc:
        raise RestoreFailed(f"cannot send the clock: {exc}") from None
    if (got := _line(sock, deadline)) != b"ok":
        raise RestoreFailed(f"the restored guest said {got!r}, not 'ok'")
    sock.settimeout(None)


_SAID: set[str] = set()


def say_once(message: str) -> None:
    """Tell the user why a boot is cold, once per process and reason (not once per boot)."""
    if message not in _SAID:
        _SAID.add(message)
        print(f"vmtest: {message}", file=sys.stderr, flush=True)


__all__ = [
    "COLD_ENV",
    "RestoreFailed",
    "Shape",
    "cold_requested",
    "discard",
    "disk_bytes",
    "entry_dir",
    "hand_over",
    "lock",
    "migrate_from",
    "migrate_to",
    "placeholders",
    "say_once",
    "shape_of",
    "state_file",
    "wait_parked",
]
