"""Park a booted guest until the host restores it, give it what this boot must have, start it.

init.sh runs this as PID 1 in the final root (``switch_root`` to python3), in a boot whose state
is saved (vmtests.vm.resume), instead of stage2.sh. It says ``parked`` on the control port and
waits; the host saves the VM's state then. Every later boot restores that state and resumes
here, so each one gets, over the control port:

  host -> guest  {"seed": HEX, "files": {NAME: BASE64}}   this boot's files (/vmtest: argv,
                                                           env, mode, hostname), one line
  guest -> host  clock
  host -> guest  NANOSECONDS                              the host's clock, sent on request so
                                                           that the guest's is off by one trip
                                                           (set by a thread as it arrives)
  guest -> host  ok                                       clock set, entropy pool re-seeded,
                                                           disks re-read, tree mounted

Then each per-boot disk is forgotten as the saved boot saw it (its placeholder's cached blocks
and partition table: BLKFLSBUF, BLKRRPART) and /dev/vmtest/<serial> is relinked from the disks
QEMU now has; the tree disk (vmtests.vm.treedisk) is mounted read-only at /src; and stage2.sh
starts the job exactly as after a cold boot.

All of it is done here, with system calls, rather than in a shell: under TCG every process a
shell starts costs tens of milliseconds, and this Python is already running (with every module
it needs imported) in the saved state, so a restored boot starts no process before stage2.sh.

Re-seeding needs two ioctls: RNDADDENTROPY mixes (and credits) the host's bytes, and
RNDRESEEDCRNG makes the kernel's generator draw from the pool now. Without the second, two
guests restored from one state would hand out the same random bytes until the generator's next
scheduled reseed. Standard library only.
"""

from __future__ import annotations

import binascii
import ctypes
import fcntl
import json
import os
import shutil
import struct
import threading
import time

CTL_PORT = "/dev/vmtest/vmtest-ctl"
IMAGE_DISKS = ("vmtest-root", "vmtest-modules")  # the image's own disks, the same every boot
TREE_SERIAL = "vmtest-tree"
STAGE2 = ("/bin/busybox", "sh", "/src/vmtests/guest/stage2.sh")
RNDADDENTROPY = 0x40085203  # _IOW('R', 3, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 7)
BLKRRPART = 0x125F  # _IO(0x12, 95)
BLKFLSBUF = 0x1261  # _IO(0x12, 97)
MS_RDONLY = 1
WARM_PACKAGES = (
    *("collections", "concurrent/futures", "ctypes", "encodings"),
    *("importlib", "json", "logging", "re"),
)
LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before parking, so free in a restored boot


def fatal(message: str) -> None:
    """Say why on the console (the host looks for the marker) and end PID 1: the kernel panics
    and QEMU ends at once."""
    with open("/dev/console", "w") as console:
        console.write(f"vmtest-park: FATAL: {message}\n")
    raise SystemExit(1)


def _line(fd: int) -> bytes:
    """One line, read a byte at a time so nothing after it is taken from the port."""
    out = bytearray()
    while (b := os.read(fd, 1)) != b"\n":
        if not b:
            fatal("the control port closed")
        out += b
    return bytes(out)


def reseed(seed: bytes) -> None:
    fd = os.open("/dev/urandom", os.O_WRONLY)
    try:
        os.write(fd, seed)
        fcntl.ioctl(fd, RNDADDENTROPY, struct.pack("ii", 8 * len(seed), len(seed)) + seed)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)


def write_files(files: dict[str, str]) -> None:
    """This boot's /vmtest, and nothing of the saved boot's."""
    shutil.rmtree("/vmtest", ignore_errors=True)
    for name, data in files.items():
        path = "/" + name
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(binascii.a2b_base64(data))


def refresh_disks() -> None:
    """Drop what the saved boot read from its placeholder disks, and name the disks QEMU has now."""
    serials = {}
    for name in sorted(os.listdir("/sys/block")):
        if not name.startswith("vd"):
            continue
        with open(f"/sys/block/{name}/serial") as f:
            serial = f.read().strip()
        serials[serial] = name
        if serial in IMAGE_DISKS:
            continue
        fd = os.open(f"/dev/{name}", os.O_RDONLY)
        try:
            fcntl.ioctl(fd, BLKFLSBUF)
            fcntl.ioctl(fd, BLKRRPART)
        except OSError as exc:
            fatal(f"re-read disk /dev/{name}: {exc}")
        finally:
            os.close(fd)
    for link in os.listdir("/dev/vmtest"):
        path = f"/dev/vmtest/{link}"
        if os.path.islink(path) and os.readlink(path).startswith("/dev/vd"):
            os.unlink(path)
    for serial, name in serials.items():
        os.symlink(f"/dev/{name}", f"/dev/vmtest/{serial}")


def mount_tree() -> None:
    source = f"/dev/vmtest/{TREE_SERIAL}".encode()
    if LIBC.mount(source, b"/src", b"squashfs", MS_RDONLY, None) != 0:
        fatal(f"mount the tree disk: {os.strerror(ctypes.get_errno())}")


class Clock(threading.Thread):
    """Sets the clock the moment the host's answer arrives, while the main thread does the
    rest: the answer is then off by one trip, not by the trip and the work done meanwhile, and
    under load the host's answer often takes longer than all that work."""

    def __init__(self, ctl: int) -> None:
        super().__init__(daemon=True)
        self.ctl = ctl
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            time.clock_settime_ns(time.CLOCK_REALTIME, int(_line(self.ctl)))
        except BaseException as exc:  # reported by the main thread
            self.error = exc


def warm(lib: str = os.path.dirname(os.__file__)) -> None:
    """Read the standard library's bytecode (the top level and the packages guest scripts use)
    into the page cache before parking: a restored boot then finds it in its saved memory
    instead of decompressing it from the lz4 root squashfs under TCG (the agent's imports alone
    cost 0.6 s of QEMU's CPU that way). About 8 MB of the saved RAM; nothing of the tree."""
    for folder in ("", *WARM_PACKAGES):
        cache = os.path.join(lib, folder, "__pycache__")
        for name in os.listdir(cache):
            if ".opt-" not in name:
                with open(os.path.join(cache, name), "rb") as f:
                    while f.read(1 << 20):
                        pass


def main() -> None:
    warm()
    ctl = os.open(CTL_PORT, os.O_RDWR)
    os.write(ctl, b"parked\n")
    header = json.loads(_line(ctl))
    os.write(ctl, b"clock\n")
    clock = Clock(ctl)
    clock.start()
    write_files(header["files"])
    reseed(bytes.fromhex(header["seed"]))
    refresh_disks()
    mount_tree()
    with open("/vmtest/hostname", "rb") as f:
        hostname = f.read().strip()
    with open("/proc/sys/kernel/hostname", "wb") as f:
        f.write(hostname)
    clock.join()
    if clock.error is not None:
        fatal(f"set the clock: {clock.error}")
    os.write(ctl, b"ok\n")
    os.close(ctl)
    os.chdir("/")
    os.execv(STAGE2[0], STAGE2)


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # PID 1 must say why before it ends
        fatal(f"{type(exc).__name__}: {exc}")
