"""Park a booted guest until the host restores it, then take in what this boot must have.

Run by park.sh (in a boot whose state is saved, vmtests.vm.resume) on the guest's python3,
with fd 3 on the control port and fd 4 on /dev/urandom, its stdout piped to cpio. It says
``parked`` and waits; the host saves the VM's state then. Every later boot restores that state
and resumes here, so each one gets, over the control port:

  host -> guest  {"len": N, "seed": HEX} + N bytes     this boot's payload (a cpio archive),
                                                        copied to stdout, for park.sh's cpio
  guest -> host  clock
  host -> guest  NANOSECONDS                            the host's clock, sent on request so
                                                        that the guest's is off by one trip
  guest -> host  ok                                     clock set, entropy pool re-seeded

Re-seeding needs two ioctls, which no busybox applet does: RNDADDENTROPY mixes (and credits)
the host's bytes, and RNDRESEEDCRNG makes the kernel's generator draw from the pool now.
Without the second, two guests restored from one state would hand out the same random bytes
until the generator's next scheduled reseed. Python is already running in the saved state, so
this costs the restored boot no interpreter start. Standard library only.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import time

CTL, RANDOM = 3, 4
RNDADDENTROPY = 0x40085203  # _IOW('R', 3, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 7)


def _line(fd: int) -> bytes:
    """One line, read a byte at a time so nothing after it is taken from the port."""
    out = bytearray()
    while (b := os.read(fd, 1)) != b"\n":
        if not b:
            raise SystemExit("vmtest-park: the control port closed")
        out += b
    return bytes(out)


def reseed(fd: int, seed: bytes) -> None:
    os.write(fd, seed)
    fcntl.ioctl(fd, RNDADDENTROPY, struct.pack("ii", 8 * len(seed), len(seed)) + seed)
    fcntl.ioctl(fd, RNDRESEEDCRNG)


def main() -> None:
    os.write(CTL, b"parked\n")
    header = json.loads(_line(CTL))
    left = int(header["len"])
    while left:
        chunk = os.read(CTL, min(left, 1 << 16))
        if not chunk:
            raise SystemExit("vmtest-park: the control port closed mid-payload")
        view = memoryview(chunk)
        while view:
            view = view[os.write(1, view) :]
        left -= len(chunk)
    os.close(1)  # park.sh's cpio sees the end of the archive
    os.write(CTL, b"clock\n")
    time.clock_settime_ns(time.CLOCK_REALTIME, int(_line(CTL)))
    reseed(RANDOM, bytes.fromhex(header["seed"]))
    os.write(CTL, b"ok\n")


if __name__ == "__main__":
    main()
