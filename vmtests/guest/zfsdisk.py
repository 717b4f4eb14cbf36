"""A ZFS vdev on a guest disk, where there is no udev.

``zpool create`` on a whole disk writes a GPT and then waits for udev to show the partition it
made; with no udev that fails ("cannot label 'vdc': failed to detect device partitions on
'/dev/vdc1': 19", measured). Given a partition, ZFS labels nothing: so the harness writes one
partition over the disk itself (sfdisk, whose re-read makes devtmpfs show the node) and hands
ZFS that. Standard library only.
"""

from __future__ import annotations

import os
import time

from vmtests.guest.proc import run


def partition_of(disk: str) -> str:
    """The first partition of ``disk`` (a /dev/vmtest/NAME link is followed to vdX)."""
    real = os.path.realpath(disk)
    return real + ("p1" if real[-1].isdigit() else "1")


def vdev(disk: str) -> str:
    """One partition spanning ``disk``, made now; its path, once the kernel shows it."""
    run(["sfdisk", "-q", disk], stdin="label: dos\n,,\n")
    part = partition_of(disk)
    deadline = time.monotonic() + 10
    while not os.path.exists(part) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not os.path.exists(part):
        raise RuntimeError(f"{part} did not appear after partitioning {disk}")
    return part
