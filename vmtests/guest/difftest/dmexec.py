"""The kernel side of ``vmtest difftest``: one long-lived process that runs dm-snapshot histories.

Started once per guest (``python3 -I -S dmexec.py``), it reads one JSON history per stdin line
and answers one JSON line of observations per history. One process and one round trip per
history, because under TCG a python3 start costs ~1 s and a ``dmsetup`` or ``losetup`` run
~150 ms, while an ioctl costs microseconds: dm goes through snapkit's ``IoctlDm`` and loop
devices through the loop ioctls. Standard library only (snapkit is, too).

Every history starts from nothing: the previous one's dm devices are removed, its loop devices
detached and its files deleted. Data reads bypass every page cache (``O_DIRECT``), and buffered
writes are synced and their cache dropped, so what is observed is the devices, not a stale
cache (the origin's bytes change under its page cache when a merge runs).

Request: ``{"origin_sectors", "ops": [op, ...], "checks": [op index, ...]}``, ops as
``vmtests.difftest.ops`` encodes them; answer: ``{"obs": [observation, ...]}`` or
``{"error": text}``, one observation per op: its result, every device's status line, and for
the op indexes in ``checks`` the digests of every device and backing file.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import mmap
import os
import sys
import time
from array import array
from pathlib import Path
from typing import Any

ROOT = Path("/tmp/difftest")
PREFIX = "dt-"
SECTOR = 512
LOOP_CTL_GET_FREE = 0x4C82
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
BLKFLSBUF = 0x1261
ORIGIN_TAG = 0xFFFF0000  # the tag of the origin's first content; writes use 0-255
MERGE_POLL_S = 0.001
MERGE_LIMIT_S = 60.0
MERGE_DELAY_MS = 10  # read delay of the COW under an interrupted merge


def pattern(tag: int, offset: int, length: int) -> bytes:
    """Data that names its own sector and writer, so a misplaced sector cannot go unseen:
    each sector is 32 copies of ``<u64 sector, u32 tag, u32 0xD1FF7E57>``.

    The host model builds the same bytes from this function, so both sides write alike.
    Built with array slice assignments (33 C-level steps, not one per sector), since under
    TCG a 4 MiB origin built sector by sector in Python took most of a history's set-up.
    """
    count = length // SECTOR
    words = array("Q", bytes(8)) * (count * 64)
    words[1::2] = array("Q", [(0xD1FF7E57 << 32) | tag]) * (count * 32)
    sectors = array("Q", range(offset // SECTOR, offset // SECTOR + count))
    for k in range(32):
        words[2 * k :: 64] = sectors
    if sys.byteorder == "big":
        words.byteswap()
    return words.tobytes()


def digest(data: bytes | bytearray | memoryview) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class Loop:
    """A loop device over a file in guest tmpfs, attached with ioctls (no losetup)."""

    def __init__(self, path: Path, size: int, data: bytes = b"") -> None:
        self.file = path
        self.sectors = size // SECTOR
        with open(path, "wb") as f:
            f.write(data)
            f.truncate(size)
        ctl = os.open("/dev/loop-control", os.O_RDWR)
        try:
            number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
        finally:
            os.close(ctl)
        self.dev = Path(f"/dev/loop{number}")
        backing = os.open(path, os.O_RDWR)
        self.fd = os.open(self.dev, os.O_RDWR)
        try:
            fcntl.ioctl(self.fd, LOOP_SET_FD, backing)
        finally:
            os.close(backing)
        rdev = os.stat(self.dev).st_rdev
        self.devnum = (os.major(rdev), os.minor(rdev))

    def detach(self) -> None:
        try:
            fcntl.ioctl(self.fd, LOOP_CLR_FD, 0)
        finally:
            os.close(self.fd)
            self.file.unlink(missing_ok=True)


class Executor:
    def __init__(self) -> None:
        from snapkit.dm.control import IoctlDm

        self.dm = IoctlDm()
        self.loops: list[Loop] = []
        self.origin: Loop | None = None
        self.sectors = 0
        self.cows: dict[int, tuple[Loop, str, int]] = {}  # snapshot index -> loop, kind, chunk
        self.active: list[int] = []  # snapshot devices that exist, in creation order
        self.image = b""  # the origin's first content, cut to size (the pattern is a prefix)
        ROOT.mkdir(parents=True, exist_ok=True)

    # -- devices ---------------------------------------------------------------------------
    def table(self, target: str, *args: Any) -> Any:
        from snapkit.dm import table as t

        assert self.origin is not None
        real = t.DevNum(*self.origin.devnum)
        if target == "origin":
            return t.Table.single(self.sectors, t.SnapshotOrigin(real))
        loop, kind, chunk = self.cows[args[0]]
        cow = t.DevNum(*loop.devnum)
        if target == "delay":
            params = f"{cow} 0 {MERGE_DELAY_MS}"
            return t.Table.single(loop.sectors, t.Raw("delay", params))
        if target == "merge":
            info = self.dm.info(f"{PREFIX}d{args[0]}") if args[1] else None
            cow = info.dev if info is not None else cow
            return t.Table.single(self.sectors, t.SnapshotMerge(real, cow, t.Store("P"), chunk))
        return t.Table.single(self.sectors, t.Snapshot(real, cow, t.Store(kind), chunk))

    def reset(self) -> None:
        for name in sorted(self.dm.list_devices(), reverse=True):  # dt-s*, dt-origin, then dt-d*
            if name.startswith(PREFIX):
                self.dm.remove(name)
        for loop in self.loops:
            loop.detach()
        self.loops, self.origin, self.cows, self.active = [], None, {}, []
        for leftover in ROOT.iterdir():
            leftover.unlink()

    def setup(self, sectors: int) -> None:
        self.sectors = sectors
        if len(self.image) < sectors * SECTOR:  # made once: 0.1 s per 4 MiB under TCG
            self.image = pattern(ORIGIN_TAG, 0, sectors * SECTOR)
        self.origin = Loop(ROOT / "origin", sectors * SECTOR, self.image[: sectors * SECTOR])
        self.loops.append(self.origin)
        self.dm.create(PREFIX + "origin")
        self.dm.load(PREFIX + "origin", self.table("origin"))
        self.dm.resume(PREFIX + "origin")

    def activate(self, index: int) -> None:
        """The LVM order: the snapshot is live before the origin resumes, whose resume also
        recomputes the split boundary from every snapshot's chunk size."""
        name = f"{PREFIX}s{index}"
        self.dm.create(name)
        self.dm.load(name, self.table("snap", index))
        self.dm.load(PREFIX + "origin", self.table("origin"))
        self.dm.suspend(PREFIX + "origin")
        self.dm.resume(name)
        self.dm.resume(PREFIX + "origin")
        self.active.append(index)

    def device(self, target: int) -> str:
        return f"/dev/mapper/{PREFIX}origin" if target < 0 else f"/dev/mapper/{PREFIX}s{target}"

    # -- operations ------------------------------------------------------------------------
    def op_snap(self, op: dict[str, Any]) -> Any:
        index = len(self.cows)
        loop = Loop(ROOT / f"cow{index}", op["cow_sectors"] * SECTOR)
        self.loops.append(loop)
        self.cows[index] = (loop, op["kind"], op["chunk"])
        self.activate(index)
        return "ok"

    def op_write(self, op: dict[str, Any]) -> Any:
        offset, length = op["sector"] * SECTOR, op["sectors"] * SECTOR
        data = pattern(op["tag"], offset, length)
        flags = os.O_WRONLY | (os.O_DIRECT if op["direct"] else 0)
        fd = os.open(self.device(op["dev"]), flags)
        try:
            if op["direct"]:
                buf = mmap.mmap(-1, length)
                buf.write(data)
                os.pwrite(fd, buf, offset)
            else:
                os.pwrite(fd, data, offset)
                os.fsync(fd)
            return "ok"
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc.errno))
        finally:
            if not op["direct"]:
                fcntl.ioctl(fd, BLKFLSBUF, 0)
            os.close(fd)

    def op_read(self, op: dict[str, Any]) -> Any:
        return read_digest(self.device(op["dev"]), op["sector"] * SECTOR, op["sectors"] * SECTOR)

    def op_reload(self, op: dict[str, Any]) -> Any:
        """Remove every device and build them again from the bytes: transient stores are
        lost, persistent ones are read back from their COW."""
        for index in self.active:
            self.dm.remove(f"{PREFIX}s{index}")
        self.dm.remove(PREFIX + "origin")
        keep = [i for i in self.active if self.cows[i][1] != "N"]
        self.active = []
        self.dm.create(PREFIX + "origin")
        self.dm.load(PREFIX + "origin", self.table("origin"))
        self.dm.resume(PREFIX + "origin")
        for index in keep:
            self.activate(index)
        return "ok"

    def op_merge(self, op: dict[str, Any]) -> Any:
        """lvconvert --merge without LVM: the snapshot device goes and the origin takes a
        snapshot-merge table over the same COW. With ``stop`` (in eighths) the origin is
        suspended once about that share is merged (0: at once), which stops the merge at a
        batch boundary, and the snapshot is put back over its partly merged COW."""
        index, stop = op["snap"], op["stop"]
        origin, delay = PREFIX + "origin", f"{PREFIX}d{index}"
        self.dm.remove(f"{PREFIX}s{index}")
        self.active.remove(index)
        if stop is not None:
            # COW reads delayed: each batch takes a while, so a stop lands between batches.
            self.dm.create(delay)
            self.dm.load(delay, self.table("delay", index))
            self.dm.resume(delay)
        self.dm.load(origin, self.table("merge", index, stop is not None))
        self.dm.suspend(origin)
        self.dm.resume(origin)
        result = self.wait_merge(origin, stop)
        self.dm.suspend(origin)
        self.dm.load(origin, self.table("origin"))
        self.dm.resume(origin)
        if stop is not None:
            self.dm.remove(delay)
        if stop is not None or result != "merged":
            self.activate(index)
        return result

    def wait_merge(self, origin: str, stop: int | None) -> str:
        first = self.usage(origin)
        if isinstance(first, str):
            return first  # Invalid: the kernel refuses to merge
        deadline = time.monotonic() + MERGE_LIMIT_S
        target = first[0] - (first[0] - first[2]) * (stop or 0) // 8
        while True:
            now = self.usage(origin)
            if isinstance(now, str):
                return now
            if now[0] == now[2]:
                return "merged" if stop is None else "stopped"
            if stop is not None and now[0] <= target:
                return "stopped"
            if time.monotonic() > deadline:
                return "ETIMEDOUT"
            time.sleep(MERGE_POLL_S)

    def usage(self, name: str) -> tuple[int, int, int] | str:
        from snapkit.dm.status import SnapshotUsage

        (line,) = self.dm.status(name)
        st = line.status
        if isinstance(st, SnapshotUsage):
            return (st.allocated, st.total, st.metadata or 0)
        return str(getattr(st, "value", st))

    # -- observation -----------------------------------------------------------------------
    def statuses(self) -> dict[str, str]:
        from snapkit.dm.status import NoStatus, SnapshotFailure, SnapshotUsage

        out = {}
        for key, name in [("origin", PREFIX + "origin")] + [
            (f"s{i}", f"{PREFIX}s{i}") for i in self.active
        ]:
            (line,) = self.dm.status(name)
            st = line.status
            if isinstance(st, SnapshotUsage):
                text = f"{st.allocated}/{st.total} {st.metadata}"
            elif isinstance(st, SnapshotFailure):
                text = st.value
            else:
                assert isinstance(st, NoStatus), st
                text = ""
            out[key] = f"{line.start} {line.length} {line.type_name} {text}".rstrip()
        return out

    def check(self) -> dict[str, Any]:
        """Full-content digests: every dm device as read through dm, the backing files, and
        each COW's header chunk (all that counts of a store once it is invalid)."""
        assert self.origin is not None
        size = self.sectors * SECTOR
        devices = {"origin": read_digest(self.device(-1), 0, size)}
        for i in self.active:
            devices[f"s{i}"] = read_digest(self.device(i), 0, size)
        files = {"origin": digest(self.origin.file.read_bytes())}
        heads = {}
        for i, (loop, _, chunk) in self.cows.items():
            data = loop.file.read_bytes()
            files[f"cow{i}"] = digest(data)
            heads[f"cow{i}"] = digest(data[: chunk * SECTOR])
        return {"devices": devices, "files": files, "heads": heads}

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        began = time.monotonic()
        self.reset()
        self.setup(request["origin_sectors"])
        setup_ms = round(1000 * (time.monotonic() - began), 1)
        checks = set(request["checks"])
        obs = []
        for n, op in enumerate(request["ops"]):
            began = time.monotonic()
            result = getattr(self, "op_" + op["op"])(op)
            entry: dict[str, Any] = {"result": result, "status": self.statuses()}
            entry["ms"] = round(1000 * (time.monotonic() - began), 1)
            if n in checks:
                began = time.monotonic()
                entry["check"] = self.check()
                entry["check_ms"] = round(1000 * (time.monotonic() - began), 1)
            obs.append(entry)
        return {"obs": obs, "setup_ms": setup_ms}


def read_digest(path: str, offset: int, length: int) -> str:
    """Read around every cache, as the device is; the errno name when the read fails."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, max(length, mmap.PAGESIZE))
        view = memoryview(buf)[:length]
        done = 0
        while done < length:
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                return "short"
            done += got
        return digest(view)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    finally:
        os.close(fd)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    executor = Executor()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            answer = executor.run(json.loads(line))
        except Exception as exc:  # reported to the host, which fails the session loudly
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
