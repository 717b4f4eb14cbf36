"""The real-kernel dm-snapshot vectors, unpacked once per test run, and the checkers.

The vectors are the project's own (``tests/data/kernel-vectors/KERNEL``, recorded by
``vmtests/guest/vectors/record.py`` on each kernel; see the README there), one set per kernel,
and every test runs on each: a vector is named ``KERNEL/NAME``. A missing set is an error
at collection, never a skip: a test that silently skips is no test. The checkers are plain
functions returning bool so that the negative-control tests can prove they really fail on a
corrupted vector.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from snapkit.cli import main
from snapkit.cow.device import MemDevice
from snapkit.cow.model import Origin

DATA = Path(
    os.environ.get("SNAPKIT_COW_VECTORS", Path(__file__).parents[1] / "data" / "kernel-vectors")
)
KERNELS = ("6.1", "6.12")  # Debian's bookworm and trixie cloud kernels


@functools.cache
def manifest() -> list[dict[str, Any]]:
    """Every kernel's vectors, each with ``id`` (KERNEL/NAME) and ``kernel`` added."""
    entries: list[dict[str, Any]] = []
    for kernel in KERNELS:
        path = DATA / kernel / "manifest.json"
        if not path.exists() or not (DATA / kernel / "vectors.tar.xz").exists():
            raise FileNotFoundError(f"the kernel vectors for {kernel} are missing from {DATA}")
        for v in json.loads(path.read_text()):
            entries.append({**v, "kernel": kernel, "id": f"{kernel}/{v['name']}"})
    return entries


def names(*need: str) -> list[str]:
    """Vector ids (KERNEL/NAME) having all the given manifest fields (for parametrize)."""
    return [v["id"] for v in manifest() if all(k in v for k in need)]


def vector(vid: str) -> dict[str, Any]:
    return next(v for v in manifest() if v["id"] == vid)


@functools.cache
def unpacked() -> Path:
    """A folder with each kernel's vectors under KERNEL/, so ``unpacked() / f"{id}.cow"``."""
    where = Path(tempfile.mkdtemp(prefix="snapkit-cow-vectors-"))
    atexit.register(shutil.rmtree, where, True)
    for kernel in KERNELS:
        (where / kernel).mkdir()
        tarball = DATA / kernel / "vectors.tar.xz"
        subprocess.run(["tar", "-xJSf", str(tarball), "-C", str(where / kernel)], check=True)
    return where


def copy(vid: str, suffix: str, dest: Path) -> Path:
    """A private, writable copy of one vector file."""
    target = dest / f"{vid}{suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(unpacked() / f"{vid}{suffix}", target)
    return target


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def status_tail(line: str) -> str:
    """'0 16384 snapshot 5560/16384 32' -> '5560/16384 32'."""
    return line.split(maxsplit=3)[3]


def export_matches(origin: Path, cow: Path, expected_sha: str, out: Path) -> bool:
    """The export checker: the CLI must succeed and give the kernel's snapshot view."""
    if main(["cow", "export", "--origin", str(origin), "--cow", str(cow), "--output", str(out)]):
        return False
    return sha256_file(out) == expected_sha


def merge_matches(origin: Path, cow: Path, vec: dict[str, Any]) -> bool:
    """The merge checker: merged origin hash and COW bytes equal to the kernel's."""
    if main(["cow", "merge", "--origin", str(origin), "--cow", str(cow)]):
        return False
    kernel_cow = unpacked() / f"{vec['id']}.cow-after-merge"
    return (
        sha256_file(origin) == vec["merged_origin_sha256"]
        and cow.read_bytes() == kernel_cow.read_bytes()
    )


def pattern(name: str, generation: int, lba: int) -> bytes:
    """The sector content the vector generator wrote (see the vectors' README)."""
    unit = f"{name}:g{generation}:lba{lba}:".encode()
    return (unit * (512 // len(unit) + 1))[:512]


def sectors(name: str, generation: int, first: int, count: int) -> bytes:
    return b"".join(pattern(name, generation, lba) for lba in range(first, first + count))


def replay(vec: dict[str, Any]) -> tuple[Origin, MemDevice, MemDevice]:
    """Rebuild the vector from scratch in the model: initial fill, snapshot, every write."""
    name = vec["name"]
    origin_dev = MemDevice(sectors(name, 0, 0, vec["origin_sectors"]))
    cow_dev = MemDevice(vec["cow_sectors"] * 512)
    origin = Origin(origin_dev)
    snap = origin.snapshot(cow_dev, "P", vec["chunk_sectors"])
    for target, first, count, generation, _result in vec["writes"]:
        data = sectors(name, generation, first, count)
        device = origin if target == "org" else snap
        try:
            device.write(first * 512, data)
        except Exception:
            if snap.valid:
                raise
    return origin, origin_dev, cow_dev
