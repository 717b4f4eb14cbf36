"""Loop devices and block-device sizes by ioctl from this process, not by ``losetup``/``blockdev``.

Why: under TCG every exec of a tool costs 0.1-0.4 s before it does anything, and the crash-state
judge attaches and detaches three loop devices and asks one size per state -- about 1.5 s of
each ~5 s state. An ioctl costs microseconds. What each call does is what the tool's run did:

* :func:`attach` is ``losetup -f [--direct-io=on] PATH``: the first free loop device
  (``LOOP_CTL_GET_FREE``), the backing file opened read-write, configured in one
  ``LOOP_CONFIGURE`` with its file name, and with direct I/O when asked -- then checked in
  sysfs, since the kernel quietly leaves direct I/O off when the backing cannot do it, and
  a loop with a page cache of its own between a filesystem and the logged disk would hide
  the very writes a crash state is about;
* :func:`detach` is ``losetup -d``: ``LOOP_CLR_FD``, which for a device still open (a dm
  table over it) sets autoclear and returns, as losetup's does;
* :func:`loops` and :func:`loop_of` find loops by their backing file in sysfs, as snapkit does
  after a reboot; :func:`sectors` is ``blockdev --getsz`` (``BLKGETSIZE64``).

Standard library only (the guest's rule).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time

from vmtests.guest.proc import log

LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
BLKGETSIZE64 = 0x80081272  # _IOR(0x12, 114, size_t)
LO_FLAGS_DIRECT_IO = 16
LO_NAME_SIZE = 64
# struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 __reserved[8]; }
# struct loop_info64 { u64 device, inode, rdevice, offset, sizelimit; u32 number,
#   encrypt_type, encrypt_key_size, flags; u8 file_name[64], crypt_name[64],
#   encrypt_key[32]; u64 init[2]; }
LOOP_INFO64 = struct.Struct(f"=5Q4I{LO_NAME_SIZE}s{LO_NAME_SIZE}s32s2Q")
LOOP_CONFIG = struct.Struct(f"=2I{LOOP_INFO64.size}s8Q")
GET_FREE_TRIES = 16  # another attach may take the free device between asking and configuring


def loop_config(fd: int, path: str, *, direct_io: bool) -> bytes:
    """The ``struct loop_config`` that attaches ``fd`` (opened from ``path``) whole: no offset,
    no size limit, the default block size, its name recorded as losetup records it."""
    flags = LO_FLAGS_DIRECT_IO if direct_io else 0
    name = os.fsencode(path)[: LO_NAME_SIZE - 1]
    info = LOOP_INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, flags, name, b"", b"", 0, 0)
    return LOOP_CONFIG.pack(fd, 0, info, *([0] * 8))


def attach(path: str, *, direct_io: bool = False) -> str:
    """Attach ``path`` to the first free loop device; that device's path."""
    t0 = time.monotonic()
    backing = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        loop = _configure(backing, path, direct_io)
    finally:
        os.close(backing)
    if direct_io and _sysfs(loop, "loop/dio") != "1":
        detach(loop)
        raise OSError(errno.EINVAL, f"{loop}: the kernel left direct I/O off over {path}")
    log(f"loop attach {path} -> {loop}{' (direct I/O)' if direct_io else ''}"
        f" in {time.monotonic() - t0:.3f}s")  # fmt: skip
    return loop


def _configure(backing: int, path: str, direct_io: bool) -> str:
    config = loop_config(backing, path, direct_io=direct_io)
    for _ in range(GET_FREE_TRIES):
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
        finally:
            os.close(ctl)
        loop = f"/dev/loop{number}"
        fd = os.open(loop, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, LOOP_CONFIGURE, config)
            return loop
        except OSError as exc:
            if exc.errno != errno.EBUSY:  # EBUSY: taken since it was free; ask again
                raise
        finally:
            os.close(fd)
    raise OSError(errno.EBUSY, f"no free loop device for {path} in {GET_FREE_TRIES} tries")


def detach(loop: str) -> None:
    """``losetup -d LOOP``: detached now, or (still open) once its last user closes it."""
    fd = os.open(loop, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD, 0)
    finally:
        os.close(fd)
    log(f"loop detach {loop}")


def loops() -> dict[str, str]:
    """Every attached loop device (``/dev/loopN``) and its backing file, from sysfs."""
    out = {}
    for name in sorted(os.listdir("/sys/block")):
        backing = _sysfs(f"/dev/{name}", "loop/backing_file")
        if backing:
            out[f"/dev/{name}"] = backing
    return out


def loop_of(backing: str) -> str:
    """The loop device attached to ``backing`` (its path), or ""."""
    return next((loop for loop, path in loops().items() if path == backing), "")


def sectors(device: str) -> int:
    """``blockdev --getsz DEVICE``: its size in 512-byte sectors."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = fcntl.ioctl(fd, BLKGETSIZE64, bytes(8))
    finally:
        os.close(fd)
    return int(struct.unpack("=Q", raw)[0]) // 512


def _sysfs(device: str, attr: str) -> str:
    try:
        with open(f"/sys/block/{os.path.basename(device)}/{attr}", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


__all__ = ["attach", "detach", "loop_config", "loop_of", "loops", "sectors"]
