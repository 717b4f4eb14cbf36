"""The working tree as a read-only disk, for boots restored from a saved state.

A restored guest (vmtests.vm.resume) used to receive its tree (snapkit/, vmtests/guest/ and
their bytecode, about 2 MB) over the control port and unpack it with busybox cpio: under TCG
that was the largest part of a restored boot (0.6-1 s of about 2 s). Now the tree travels as
an uncompressed squashfs, built on the host once per tree and cached, which the guest mounts at
/src after the restore: nothing is copied, and only the files a boot opens are ever read.
Uncompressed, because decompressing costs emulated cycles and a virtio disk read costs almost
none.

The image is keyed by the tree's sources (names, modes, bytes), the host Python's bytecode tag
and magic number, and TREEDISK_VERSION, so an edit makes a new image and a hit costs only
reading and hashing the tree (milliseconds; no compiling). Its file is padded to a size class
(a power of two, 16 MiB at least): the disk's size is part of a saved state's shape (the kernel
reads a virtio disk's capacity once), and padding keeps that shape, and so the saved state,
the same across edits of the tree.

Entries (``tree-<key>/tree.squashfs``) live beside the images, built aside and renamed in under
a lock like every cache entry. Each use touches the file; building a new one removes those not
used for a day (cache.prune), so a day of edits does not fill the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import stat
import sys
from pathlib import Path

from vmtests.vm import cache, cpio, payload
from vmtests.vm.qemu import Disk

TREEDISK_VERSION = "1"  # bumped when what an image holds or how it is made changes
SERIAL = "vmtest-tree"
FILE = "tree.squashfs"
MIN_BYTES = 16 << 20


def size_class(n: int) -> int:
    """The disk size an image of ``n`` bytes is padded to: a power of two, MIN_BYTES at least."""
    return max(MIN_BYTES, 1 << max(0, n - 1).bit_length())


def key(sources: list[cpio.Entry]) -> str:
    h = hashlib.sha256(f"treedisk {TREEDISK_VERSION} {sys.implementation.cache_tag}\n".encode())
    h.update(importlib.util.MAGIC_NUMBER)
    h.update(cpio.archive(sources))
    return h.hexdigest()[:16]


def stage(entries: list[cpio.Entry], root: Path) -> None:
    """Write archive entries as files under ``root``; a missing parent folder is made 0755,
    as cpio.archive makes it."""
    for entry in entries:
        path = root / entry.name
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        kind = stat.S_IFMT(entry.mode)
        if kind == stat.S_IFDIR:
            path.mkdir(parents=True, exist_ok=True)
        elif kind == stat.S_IFLNK:
            path.symlink_to(entry.data.decode())
            continue
        else:
            path.write_bytes(entry.data)
        path.chmod(stat.S_IMODE(entry.mode))


def mksquashfs_argv(src: Path, out: Path) -> list[str]:
    """Uncompressed (-noI -noD -noF -noX), owned by root, fixed times: the same bytes each time."""
    epoch = str(cache.SOURCE_DATE_EPOCH)
    return [
        "mksquashfs",
        str(src),
        str(out),
        *("-noI", "-noD", "-noF", "-noX", "-no-xattrs", "-all-root", "-noappend"),
        *("-quiet", "-no-progress", "-mkfs-time", epoch, "-all-time", epoch),
    ]


def image(tree: Path) -> Path:
    """The cached tree disk's file for ``tree``, built if missing (raises ImageError)."""
    sources = payload.tree_sources(tree, prefix="")
    final = cache.cache_dir() / f"tree-{key(sources)}"
    found = final / FILE
    if found.is_file():
        cache.touch(found)
        return found
    with cache.locked(cache.cache_dir() / ".tree.lock"):  # one for all: a build takes a moment
        if found.is_file():
            return found
        with cache.entry(final) as work:
            staged = work / "stage"
            stage(payload.with_bytecode(sources), staged)
            out = work / FILE
            cache.run(mksquashfs_argv(staged, out), lambda _: None, epoch=False)
            with out.open("r+b") as f:
                f.truncate(size_class(out.stat().st_size))
            cache.remove(staged)
    cache.prune("tree-*", FILE, keep=final)
    return found


def disk(tree: Path) -> Disk:
    return Disk(image(tree), SERIAL, readonly=True)


__all__ = ["SERIAL", "disk", "image", "key", "mksquashfs_argv", "size_class", "stage"]
