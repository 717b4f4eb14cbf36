"""Record dm-snapshot vectors from the running kernel: the offline model's ground truth.

Run in a guest with a scratch disk (``vmtest exec --kernel SPEC --disk 256M --keep DIR --``
and the argv of ``guest.command("vectors.record", "/dev/vmtest/disk0")``; the command line is
in tests/data/kernel-vectors/README.md); it writes a tar (members
as the README of ``tests/data/kernel-vectors`` lists, the manifest as ``manifest.json``) onto
that disk, which the host reads with ``tar -xf DIR/disk0.raw`` and compresses (xz under TCG
costs minutes). Not to stdout: ``vmtest exec`` powers off once the command's status is sent,
and measured, the last ~15 MB of a 137 MB stdout were still in flight and lost.

Every byte of a vector is what the kernel wrote: loop devices over sparse files in /tmp,
the ``snapshot``, ``snapshot-origin`` and ``snapshot-merge`` targets, ``O_DIRECT`` writes
each followed by fsync. The writes are drawn from a fixed seed, so two kernels get the same
histories and any difference between their vectors is the kernels'.
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

SECTOR = 512
WORK = Path("/tmp/vectors")
LENGTHS = (1, 3, 8, 8, 17, 21, 69)
# name, chunk sectors, origin and COW sectors, writes, snapshot writes too, stop the merge
VECTORS = (
    ("s1-c8-origin", 8, 16384, 16384, 400, False, False),
    ("s2-c32-mixed", 32, 16384, 16384, 80, True, False),
    ("s3-c8-overflow", 8, 16384, 2048, 400, False, False),  # ~2900 sectors > 2048: overflows
    ("s4-c8-midmerge", 8, 32768, 32768, 700, False, True),
)


def sh(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def pattern(name: str, generation: int, first: int, count: int) -> bytes:
    """``NAME:gGEN:lbaLBA:`` over each sector: a wrong byte names the write it came from."""
    out = bytearray()
    for lba in range(first, first + count):
        unit = f"{name}:g{generation}:lba{lba}:".encode()
        out += (unit * (SECTOR // len(unit) + 1))[:SECTOR]
    return bytes(out)


def write(dev: str, first: int, data: bytes) -> str:
    """An O_DIRECT write and an fsync; the errno name when the kernel refuses it."""
    buf = mmap.mmap(-1, len(data))
    buf.write(data)
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    try:
        os.pwrite(fd, buf, first * SECTOR)
        os.fsync(fd)
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    finally:
        os.close(fd)


def sha_of(path: str) -> str:
    """SHA-256 of a whole device or file read around the page cache; ``EIO`` if it fails."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 1 << 20)
    try:
        while got := os.readv(fd, [buf]):
            h.update(buf[:got])
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, "EIO")
    finally:
        os.close(fd)
    return h.hexdigest()


def status(name: str) -> str:
    return sh("dmsetup", "status", name)


def wait_merge(name: str, stop_at: int | None) -> str:
    """Poll until merged (allocated == metadata); with ``stop_at``, suspend once allocated
    falls to it and return the status at that moment."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = status(name)
        fields = line.split()  # 0 SIZE snapshot-merge USED/TOTAL METADATA
        used, meta = fields[3].split("/")[0], fields[4]
        if stop_at is not None and int(used) <= stop_at:
            sh("dmsetup", "suspend", name)
            return status(name)
        if int(used) == int(meta):
            return line
        time.sleep(0.01)
    raise RuntimeError(f"{name}: the merge did not finish: {status(name)}")


def record(spec: tuple[str, int, int, int, int, bool, bool], out: Path) -> dict[str, Any]:
    name, chunk, osize, csize, nwrites, mixed, midmerge = spec
    rng = random.Random(name)
    origin_file, cow_file = WORK / f"{name}.origin", WORK / f"{name}.cow"
    origin_file.write_bytes(pattern(name, 0, 0, osize))
    with cow_file.open("wb") as sparse:
        sparse.truncate(csize * SECTOR)
    o_loop = sh("losetup", "--find", "--show", str(origin_file))
    c_loop = sh("losetup", "--find", "--show", str(cow_file))
    vec: dict[str, Any] = {
        "name": name,
        "chunk_sectors": chunk,
        "origin_sectors": osize,
        "cow_sectors": csize,
        "origin_sha256_before": sha_of(o_loop),
    }
    org, snap = f"v-{name}-org", f"v-{name}-snap"
    sh("dmsetup", "create", org, "--table", f"0 {osize} snapshot-origin {o_loop}")
    sh("dmsetup", "create", snap, "--table", f"0 {osize} snapshot {o_loop} {c_loop} P {chunk}")
    # The origin learns its split boundary (the snapshots' smallest chunk) when it resumes:
    # without this, a write spanning chunks is not split and only its first chunk is copied
    # (measured on 6.1 and 6.12 alike: the snapshot then shows the new data). LVM does the same.
    sh("dmsetup", "suspend", org)
    sh("dmsetup", "resume", org)
    writes = []
    for generation in range(1, nwrites + 1):
        target = "snap" if mixed and rng.random() < 0.4 else "org"
        count = rng.choice(LENGTHS)
        first = rng.randrange(0, osize - count)
        dev = f"/dev/mapper/{org if target == 'org' else snap}"
        writes.append(
            [
                target,
                first,
                count,
                generation,
                write(dev, first, pattern(name, generation, first, count)),
            ]
        )
    vec["status_before_remove"] = status(snap)
    vec["snapshot_view_sha256"] = sha_of(f"/dev/mapper/{snap}")
    vec["origin_view_sha256"] = sha_of(f"/dev/mapper/{org}")
    vec["writes"] = writes
    sh("dmsetup", "remove", snap)
    sh("dmsetup", "remove", org)
    for src in (origin_file, cow_file):
        (out / src.name).write_bytes(src.read_bytes())
    if "Invalid" not in vec["status_before_remove"]:
        merge = f"v-{name}-merge"
        cow_dev = c_loop
        if midmerge:  # COW reads delayed, so a stop lands between the merge's batches
            sh("dmsetup", "create", f"v-{name}-delay", "--table", f"0 {csize} delay {c_loop} 0 2")
            cow_dev = f"/dev/mapper/v-{name}-delay"
        table = f"0 {osize} snapshot-merge {o_loop} {cow_dev} P {chunk}"
        sh("dmsetup", "create", merge, "--table", table)
        if midmerge:
            used = int(status(merge).split()[3].split("/")[0])
            vec["interrupted_status"] = wait_merge(merge, used // 5)
            for src, suffix in ((origin_file, ".origin-mid-merge"), (cow_file, ".cow-mid-merge")):
                (out / f"{name}{suffix}").write_bytes(src.read_bytes())
            sh("dmsetup", "resume", merge)
        vec["merge_final_status"] = wait_merge(merge, None)
        vec["merged_origin_sha256"] = sha_of(f"/dev/mapper/{merge}")
        sh("dmsetup", "remove", merge)
        if midmerge:
            sh("dmsetup", "remove", f"v-{name}-delay")
        vec["merged_origin_file_sha256"] = sha_of(o_loop)
        (out / f"{name}.cow-after-merge").write_bytes(cow_file.read_bytes())
    sh("losetup", "-d", o_loop)
    sh("losetup", "-d", c_loop)
    origin_file.unlink()
    cow_file.unlink()
    return vec


def main() -> None:
    for mod in ("dm_snapshot", "loop"):
        subprocess.run(["modprobe", mod], check=False)
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / "out"
    out.mkdir(exist_ok=True)
    manifest = []
    for spec in VECTORS:
        manifest.append(record(spec, out))
        print(f"recorded {spec[0]}", file=sys.stderr, flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    with open(sys.argv[1], "r+b") as disk, tarfile.open(fileobj=disk, mode="w") as tar:
        for f in sorted(out.iterdir()):
            info = tar.gettarinfo(str(f), arcname=f.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 1700000000, 0, 0, "", ""
            with f.open("rb") as data:
                tar.addfile(info, data)
    os.sync()


if __name__ == "__main__":
    main()
