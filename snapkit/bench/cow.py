"""``snapkit bench cow``: time the offline tools against a plain copy on this machine.

Two baselines, each measured in the same run as what it is compared with: ``cp
--sparse=never`` of the origin (one ``copy_file_range``, into the page cache) for ``export
--no-fsync``, which also leaves its image in the page cache; and a copy that fsyncs (``dd
bs=1M conv=fsync``) for merge, which flushes. The machine is shared, so copy and export
alternate for ``rounds`` rounds and each keeps its median.

The COW is written directly in the layout the kernel produces (sequential allocation that
skips metadata chunks, areas in order), because building 100,000 exceptions through the
store one commit at a time would time the generator, not the tools. Everything lives in one
temporary folder that is removed afterwards.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from snapkit.cow.export import export
from snapkit.cow.format import Geometry, Header, pack_entries
from snapkit.cow.image import inspect
from snapkit.cow.merge import merge

MIB = 1 << 20


@dataclass(frozen=True)
class BenchConfig:
    origin_bytes: int = 512 * MIB
    exceptions: int = 100_000
    inspect_exceptions: int = 1_000_000
    chunk_sectors: int = 8
    seed: int = 1
    folder: str | None = None
    rounds: int = 5


@dataclass(frozen=True)
class Timing:
    name: str
    seconds: float
    goal: str = ""
    ok: bool | None = None
    baseline: str = "copy"  # "cp" (page cache) or "copy" (fsync'd); what ratio() divides by


@dataclass
class BenchResult:
    config: BenchConfig
    copy_seconds: float = 0.0  # fsync'd copy, the baseline for merge
    cp_seconds: float = 0.0  # cp --sparse=never, the baseline for export --no-fsync
    timings: list[Timing] = field(default_factory=list)

    def ratio(self, seconds: float, baseline: str = "copy") -> float:
        base = self.cp_seconds if baseline == "cp" else self.copy_seconds
        return seconds / base if base else float("inf")


def write_cow(path: str, olds: array[int], chunk_sectors: int, *, with_data: bool) -> int:
    """A valid store with these exceptions in order; returns the COW size in bytes."""
    geo = Geometry(chunk_sectors, 0)
    epa, csb = geo.entries_per_area, geo.chunk_bytes
    areas = max(1, -(-len(olds) // epa))
    last_area_full = len(olds) % epa == 0 and len(olds) > 0
    cow_chunks = geo.area_location(areas + (1 if last_area_full else 0)) + 1
    size = cow_chunks * csb
    payload = os.urandom(epa * csb) if with_data else b""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        os.pwrite(fd, Header.fresh(chunk_sectors).pack(csb), 0)
        for area in range(areas):
            part = olds[area * epa : (area + 1) * epa]
            first = geo.area_location(area) + 1
            news = array("Q", range(first, first + len(part)))
            os.pwrite(fd, pack_entries(part, news), geo.area_location(area) * csb)
            if with_data:
                os.pwrite(fd, payload[: len(part) * csb], first * csb)
    finally:
        os.close(fd)
    return size


def write_origin(path: str, size: int) -> None:
    block = bytearray(os.urandom(MIB))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(size // MIB):
            block[:8] = i.to_bytes(8, "little")  # no two blocks alike
            os.write(fd, block)
    finally:
        os.close(fd)


def plain_copy(src: str, dst: str) -> None:
    """The baseline: 1 MiB reads and writes then fsync, as ``dd bs=1M conv=fsync`` does.

    Export and merge both leave their output on stable storage, so the copy does too.
    """
    buf = bytearray(MIB)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        while n := fin.readinto(buf):
            fout.write(view[:n])
        os.fsync(fout.fileno())


def cp_copy(src: str, dst: str) -> None:
    """The export baseline: coreutils cp, written to the page cache and not flushed."""
    subprocess.run(["cp", "--sparse=never", src, dst], check=True)


def _timed(fn: Callable[[], object]) -> float:
    os.sync()  # so no step pays for the write-back of the one before
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(config: BenchConfig, log: Callable[[str], None] | None = None) -> BenchResult:
    say = log or (lambda _msg: None)
    folder = tempfile.mkdtemp(prefix="snapkit-bench-cow-", dir=config.folder)
    result = BenchResult(config)
    try:
        origin, cow, big = (os.path.join(folder, n) for n in ("origin", "cow", "cow-1m"))
        chunk_bytes = config.chunk_sectors * 512
        rng = random.Random(config.seed)
        say(f"generating a {config.origin_bytes // MIB} MiB origin")
        write_origin(origin, config.origin_bytes)
        olds = array("Q", rng.sample(range(config.origin_bytes // chunk_bytes), config.exceptions))
        say(f"generating a COW with {config.exceptions} exceptions")
        write_cow(cow, olds, config.chunk_sectors, with_data=True)
        say(f"generating a sparse COW with {config.inspect_exceptions} exceptions")
        many = array(
            "Q", rng.sample(range(4 * config.inspect_exceptions), config.inspect_exceptions)
        )
        write_cow(big, many, config.chunk_sectors, with_data=False)

        say("timing: inspect, cp and export (alternating), fsync'd copy, merge")
        result.timings.append(Timing("inspect", _timed(lambda: inspect(cow))))
        t = _timed(lambda: inspect(big))
        result.timings.append(Timing("inspect-1M", t, "<= 0.5 s", t <= 0.5))
        # cp and export both write a new file of the origin's size, whose speed depends on what
        # the disk and the page cache saw just before: warm up once, then alternate them.
        target = os.path.join(folder, "out")
        cp_copy(origin, target)
        os.unlink(target)
        copies, exports = [], []
        for _ in range(max(1, config.rounds)):
            copies.append(_timed(lambda: cp_copy(origin, target)))
            os.unlink(target)
            exports.append(_timed(lambda: export(origin, cow, target, fsync=False)))
            os.unlink(target)
        result.cp_seconds = statistics.median(copies)
        t = statistics.median(exports)
        ok = result.ratio(t, "cp") <= 1.5
        result.timings.append(Timing("export", t, "<= 1.5x cp", ok, "cp"))
        result.copy_seconds = _timed(lambda: plain_copy(origin, target))
        os.unlink(target)
        t = _timed(lambda: merge(origin, cow))
        result.timings.append(Timing("merge", t, "<= 2x copy", result.ratio(t) <= 2.0))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def as_dict(result: BenchResult) -> dict[str, object]:
    cfg = result.config
    return {
        "origin_bytes": cfg.origin_bytes,
        "exceptions": cfg.exceptions,
        "inspect_exceptions": cfg.inspect_exceptions,
        "chunk_sectors": cfg.chunk_sectors,
        "rounds": cfg.rounds,
        "cp_seconds": round(result.cp_seconds, 4),
        "copy_seconds": round(result.copy_seconds, 4),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "results": [
            {
                "name": t.name,
                "seconds": round(t.seconds, 4),
                "baseline": t.baseline,
                "ratio": round(result.ratio(t.seconds, t.baseline), 3),
                "goal": t.goal,
                "goal_met": t.ok,
            }
            for t in result.timings
        ],
    }


__all__ = [
    "BenchConfig",
    "BenchResult",
    "Timing",
    "as_dict",
    "cp_copy",
    "plain_copy",
    "run",
    "write_cow",
]
