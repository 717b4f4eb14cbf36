"""mount(2) and umount2(2) from this process through libc, not by exec'ing ``mount``/``umount``.

Why: under TCG each exec of mount(8) or umount(8) costs 0.3-0.4 s, and the crash-state judge
mounts and unmounts a handful of times per state -- several of them on mount points with
nothing mounted (a teardown that cannot know what a failed state left behind). Here a mount is
the same system call mount(8) makes for ``mount -t FS -o OPTS DEVICE DIR``: the options it
knows as VFS flags become flags, every other one goes to the filesystem as its data string.
:func:`umount` is a no-op where ``/proc/self/mounts`` shows nothing mounted.

A failure raises :class:`~vmtests.guest.proc.CommandError`, as a failed ``run(["mount", ...])``
did, so callers that catch it (a snapshot that does not mount is a finding) are unchanged; the
kernel's reason is often only in the kernel log, so the error carries its last lines.
Standard library only (the guest's rule).
"""

from __future__ import annotations

import ctypes
import os
import time

from vmtests.guest.proc import CommandError, Result, log

# the VFS flags mount(8) takes from -o (linux/mount.h); the rest is the filesystem's data
FLAGS = {
    "ro": 1,  # MS_RDONLY
    "nosuid": 2,
    "nodev": 4,
    "noexec": 8,
    "sync": 16,
    "dirsync": 128,
    "noatime": 1024,
    "nodiratime": 2048,
    "relatime": 1 << 21,
    "strictatime": 1 << 24,
    "lazytime": 1 << 25,
}
NO_FLAG = ("rw", "defaults", "")  # what mount(8) takes as "no flag"
_LIBC = ctypes.CDLL(None, use_errno=True)
_MOUNT = _LIBC.mount
_MOUNT.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_MOUNT.restype = ctypes.c_int
_UMOUNT2 = _LIBC.umount2
_UMOUNT2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_UMOUNT2.restype = ctypes.c_int


def split_options(options: str) -> tuple[int, str]:
    """``-o`` options as mount(8) hands them to the kernel: (VFS flags, the filesystem's data)."""
    flags, data = 0, []
    for opt in options.split(","):
        if opt in FLAGS:
            flags |= FLAGS[opt]
        elif opt not in NO_FLAG:
            data.append(opt)
    return flags, ",".join(data)


def mount(fs: str, device: str, target: str, options: str = "") -> None:
    """``mount -t FS [-o OPTIONS] DEVICE TARGET``."""
    flags, data = split_options(options)
    argv = ("mount", "-t", fs, *(("-o", options) if options else ()), device, target)
    t0 = time.monotonic()
    rc = _MOUNT(os.fsencode(device), os.fsencode(target), fs.encode(), flags, data.encode() or None)
    _done(argv, rc, t0)


def umount(target: str) -> None:
    """``umount TARGET`` if something is mounted there; nothing otherwise."""
    if not mounted(target):
        return
    t0 = time.monotonic()
    _done(("umount", target), _UMOUNT2(os.fsencode(target), 0), t0)


def mounted(target: str) -> bool:
    """Something is mounted on ``target`` (``/proc/self/mounts``; its octal escapes read)."""
    want = os.path.realpath(target)
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 1 and unescape(fields[1]) == want:
                return True
    return False


def unescape(field: str) -> str:
    r"""A /proc/self/mounts field with its ``\ooo`` escapes (space, tab, newline, \) decoded."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _done(argv: tuple[str, ...], rc: int, t0: float) -> None:
    """Log the call as :func:`~vmtests.guest.proc.run` logs a command; raise as it does."""
    err = ctypes.get_errno() if rc != 0 else 0
    seconds = time.monotonic() - t0
    log(f"$ {' '.join(argv)}  (syscall) -> {err} in {seconds:.3f}s")
    if rc != 0:
        why = f"{os.strerror(err)}\n{_kernel_log_tail()}"
        raise CommandError(Result(argv, err or 1, why, seconds))


def _kernel_log_tail(lines: int = 8) -> str:
    """The kernel log's last lines (a failed mount's reason is only there), or ""."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return ""
    out: list[str] = []
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record was overwritten while reading; go on
                continue
            out.append(record.decode(errors="replace").split(";", 1)[-1].rstrip())
    finally:
        os.close(fd)
    return "\n".join(out[-lines:])


__all__ = ["mount", "mounted", "split_options", "umount", "unescape"]
