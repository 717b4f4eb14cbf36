"""Guest half of the oracle: fsck a snapshot device, mount it on a throwaway layer, hash trees.

Mounting (the choice the host oracle's docstring explains): the snapshot device itself is never
written. A transient dm snapshot (store ``N``) with its own small COW on a tmpfs loop sits on
top of it and is mounted read-only; being a writable device underneath, the kernel replays a
journal or btrfs log tree into that layer exactly as it would on a real restore, and the layer
is thrown away afterwards. fsck always runs on the bare snapshot device first, so a dirty
journal is reported by fsck, not hidden by the replay.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from vmtests.guest.proc import Result, run

FSCK = {
    "ext4": ["e2fsck", "-fn"],
    "ext3": ["e2fsck", "-fn"],
    "ext2": ["e2fsck", "-fn"],
    "xfs": ["xfs_repair", "-n"],
    "btrfs": ["btrfs", "check", "--readonly"],
    "reiserfs": ["reiserfsck", "--check", "--yes", "--quiet"],
    "f2fs": ["fsck.f2fs", "--dry-run"],  # exits non-zero when it finds no valid checkpoint
    "jfs": ["fsck.jfs", "-n"],  # read-only; exits 0 only for a clean filesystem
}
MOUNT_OPTS = {"xfs": "ro,nouuid", "btrfs": "ro", "zfs": "ro"}  # every other filesystem: "ro"
ZFS_CLEAN = "errors: No known data errors"
# The journalled ext filesystems: the superblock's needs_recovery says whether a mount would
# have to replay the journal ("always clean", the question's claim 3). ext2 has no journal:
# nothing to replay, so fsck alone judges it.
EXT_JOURNALLED = ("ext3", "ext4")
# reiserfsck replays the journal onto the device before it checks (it has no read-only mode
# that skips the replay), so it runs on a throwaway layer, never on the snapshot itself.
FSCK_REPLAYS = ("reiserfs",)
LAYER = "oracle-layer"
XFS_DIRTY_LOG = "valuable metadata changes in a log"


def fsck(fs: str, device: str) -> Result:
    """The read-only check of ``device``; for a filesystem whose checker replays its journal
    first (:data:`FSCK_REPLAYS`), of a throwaway layer over it, so ``device`` stays unwritten.
    ZFS has no fsck: its checksums are verified by a scrub of the pool (which covers the
    snapshot's blocks), then ``zpool status -v`` must list no errors."""
    if fs == "zfs":
        pool = device.split("/")[0].split("@")[0]
        scrub = run(["zpool", "scrub", "-w", pool], check=False, timeout=300)
        status = run(["zpool", "status", "-v", pool], check=False)
        ok = scrub.ok and status.ok and ZFS_CLEAN in status.out
        return Result(status.argv, 0 if ok else 1, scrub.out + status.out, scrub.seconds)
    if fs in FSCK_REPLAYS:
        with layer(device) as top:
            return run([*FSCK[fs], top], check=False, timeout=300)
    return run([*FSCK[fs], device], check=False, timeout=300)


def needs_recovery(device: str) -> bool:
    """ext3's or ext4's superblock says its journal must be replayed before the filesystem is
    consistent: what a freeze clears (ext4_freeze flushes the journal) and an unfrozen copy
    keeps. Read before anything mounts the device."""
    out = run(["dumpe2fs", "-h", device], check=False).out
    features = next((ln for ln in out.splitlines() if ln.startswith("Filesystem features")), "")
    return "needs_recovery" in features.split()


def sectors(device: str) -> int:
    return int(run(["blockdev", "--getsz", device]).out.strip())


@contextmanager
def layer(device: str) -> Iterator[str]:
    """A transient dm snapshot of ``device`` with its own COW on tmpfs: writable, thrown away.
    A ZFS snapshot (``pool/fs@snap``) is no block device and has no log to replay: it is
    mounted as it is, read-only."""
    if "@" in device and not device.startswith("/"):
        yield device
        return
    cow = "/tmp/oracle-layer.cow"
    with open(cow, "wb") as f:
        f.truncate(96 << 20)
    loop = run(["losetup", "-f", "--show", cow]).out.strip()
    made = False
    try:
        table = f"0 {sectors(device)} snapshot {device} {loop} N 8"
        run(["dmsetup", "create", LAYER, "--table", table])
        made = True
        yield f"/dev/mapper/{LAYER}"
    finally:
        if made:
            run(["dmsetup", "remove", LAYER], check=False)
        run(["losetup", "-d", loop], check=False)
        os.unlink(cow)


@contextmanager
def mounted(fs: str, device: str, mountpoint: str, subvol: str = "") -> Iterator[str]:
    os.makedirs(mountpoint, exist_ok=True)
    opts = MOUNT_OPTS.get(fs, "ro") + (f",subvol={subvol}" if subvol else "")
    if fs == "btrfs":  # the snapshot and the layer share the origin's fsid: forget the others
        run(["btrfs", "device", "scan", "--forget"], check=False)
    run(["mount", "-t", fs, "-o", opts, device, mountpoint])
    try:
        yield mountpoint
    finally:
        run(["umount", mountpoint], check=False)


def xfs_log_only(result: Result) -> bool:
    """xfs_repair -n refused to trust a log that needs replaying. A frozen XFS is left with
    such a log (and lazy superblock counters) by design, so this alone says nothing yet: the
    caller replays the log on the throwaway layer and runs xfs_repair -n again there."""
    return not result.ok and XFS_DIRTY_LOG in result.out


def tree_hash(root: str, skip: tuple[str, ...] = ("lost+found",)) -> str:
    """One digest over names, types, sizes and contents: equal trees, equal digests."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip or dirpath != root)
        for name in sorted(filenames) + dirnames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            h.update(f"{rel}\0{stat.S_IFMT(st.st_mode)}\0".encode())
            if stat.S_ISREG(st.st_mode):
                h.update(f"{st.st_size}\0".encode())
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            elif stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(path).encode())
    return h.hexdigest()
