"""``snapkit bench freeze-window``: how long does taking a snapshot stall a writer?

A probe process issues a 4 KiB ``O_DIRECT`` write plus ``fdatasync`` every millisecond on the
filesystem under test and records every latency. Meanwhile one snapshot is taken with each method
(and, as floors, a bare FIFREEZE+FITHAW from one process, with and without a sync first). The
stall is the longest latency of a write that overlapped the command; the p99 of those writes says
how much the rest of the command disturbs I/O. Rounds are repeated and the median reported, and
each method is compared with ``lvcreate -s``, which suspends and resumes inside one process with
its tables preloaded (BENCHMARKS.md has the figures). Goal: ``dm`` stalls writers at most 0.5x
as long as ``lvcreate -s``.

It builds everything it needs in a throwaway VG on a loop device over a sparse file (in $TMPDIR,
tmpfs in the guest) and removes it afterwards, so it must run as root where LVM and dm work:
``vmtest exec --mem 1G -- snapkit bench freeze-window --json``.

The probe runs in its own process (``python3 -m snapkit.bench.freeze_window probe FILE``) so that
snapkit's own work never holds it up; both read CLOCK_MONOTONIC, which is system-wide.
"""

from __future__ import annotations

import mmap
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapkit.run import run as run_command

BLOCK = 4096
PERIOD = 0.001
GOAL = 0.5  # dm's longest stall, as a fraction of lvcreate -s's
VG = "skbench"


@dataclass(frozen=True)
class Round:
    method: str
    seconds: float  # the whole command
    max_ms: float  # the longest write that overlapped the command
    p99_ms: float
    writes: int


@dataclass(frozen=True)
class Summary:
    method: str
    rounds: tuple[Round, ...]

    @property
    def max_ms(self) -> float:
        return statistics.median(r.max_ms for r in self.rounds)

    @property
    def p99_ms(self) -> float:
        return statistics.median(r.p99_ms for r in self.rounds)

    @property
    def seconds(self) -> float:
        return statistics.median(r.seconds for r in self.rounds)


# --- the probe process ------------------------------------------------------------------------


def probe(path: str) -> int:
    """Write until told "stop" on stdin; then print "start latency" per write, in seconds."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
    buf.write(b"p" * BLOCK)
    samples: list[tuple[float, float]] = []
    print("ready", flush=True)
    offset, tick = 0, time.monotonic()
    while not select.select([0], [], [], 0)[0]:
        start = time.monotonic()
        os.pwrite(fd, buf, offset)
        os.fdatasync(fd)
        samples.append((start, time.monotonic() - start))
        offset = (offset + BLOCK) % (256 * BLOCK)
        tick += PERIOD
        delay = tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            tick = time.monotonic()
    os.close(fd)
    sys.stdout.write("".join(f"{s:.6f} {lat:.6f}\n" for s, lat in samples))
    return 0


def measure(method: str, probe_file: Path, argv: list[str]) -> Round:
    """Run ``argv`` once under the probe and cut the probe's record to the command's window."""
    return measure_many(method, [probe_file], argv)[0]


def measure_many(method: str, probe_files: list[Path], argv: list[str]) -> list[Round]:
    """:func:`measure` with one probe per file (a snapshot group's members), all started
    before the command and stopped after it: one :class:`Round` per probe."""
    children = []
    for probe_file in probe_files:
        child = subprocess.Popen(
            [sys.executable, "-m", "snapkit.bench.freeze_window", "probe", str(probe_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])),
        )
        children.append(child)
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the probe did not start")
    time.sleep(0.3)
    outs: list[str] = []
    try:
        begin = time.monotonic()
        run_command(argv, env=ENV)
        end = time.monotonic()
        time.sleep(0.3)
    finally:
        outs = [child.communicate("stop\n")[0] for child in children]
    return [_cut(method, out, begin, end) for out in outs]


def _cut(method: str, out: str, begin: float, end: float) -> Round:
    window = []
    for line in out.splitlines():
        start, lat = map(float, line.split())
        if start + lat >= begin and start <= end:
            window.append(lat)
    if not window:
        raise RuntimeError("the probe recorded no write during the command")
    window.sort()
    p99 = window[min(len(window) - 1, int(0.99 * len(window)))]
    return Round(method, end - begin, window[-1] * 1000, p99 * 1000, len(window))


# --- the scenario -----------------------------------------------------------------------------


ENV = {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # holds snapkit/


def sh(*argv: str) -> str:
    return run_command(list(argv), env=ENV).stdout


def snapkit_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "snapkit", *args]


def _floor(mountpoint: Path, *, sync: bool) -> list[str]:
    code = (
        "import os, sys; from pathlib import Path; from snapkit.host import fs; "
        "p = Path(sys.argv[1]); " + ("os.sync(); " if sync else "") + "fs.freeze(p); fs.thaw(p)"
    )
    return [sys.executable, "-c", code, str(mountpoint)]


@dataclass(frozen=True)
class Case:
    name: str
    mountpoint: str
    create: list[str]
    cleanup: list[str]


def run(rounds: int, log: Any) -> list[Summary]:
    work = Path(tempfile.mkdtemp(prefix="snapkit-bench-"))
    pv = work / "pv.img"
    with open(pv, "wb") as f:
        f.truncate(1536 << 20)
    loop = sh("losetup", "--show", "-f", str(pv)).strip()
    raw = work / "raw.img"
    with open(raw, "wb") as f:
        f.truncate(256 << 20)
    raw_loop = sh("losetup", "--show", "-f", str(raw)).strip()
    mounted: list[str] = []
    try:
        sh("pvcreate", "-q", loop)
        sh("vgcreate", "-q", VG, loop)
        sh("lvcreate", "-q", "-y", "-L", "256M", "-n", "lv", VG)
        sh("mkfs.ext4", "-q", f"/dev/{VG}/lv")
        lv_mp, dm_mp = work / "lv", work / "dm"
        lv_mp.mkdir()
        dm_mp.mkdir()
        sh("mount", f"/dev/{VG}/lv", str(lv_mp))
        mounted.append(str(lv_mp))
        sh("mkfs.ext4", "-q", raw_loop)
        sh(*snapkit_argv("device", "prepare", raw_loop, "--name", "skbench"))
        sh("mount", "/dev/mapper/skbench", str(dm_mp))
        mounted.append(str(dm_mp))
        cow = str(work / "cow")
        os.mkdir(cow)
        cases = [
            Case(
                "lvcreate -s",
                str(lv_mp),
                ["lvcreate", "-q", "-y", "-s", "-L", "64M", "-n", "s", f"{VG}/lv"],
                ["lvremove", "-q", "-f", f"{VG}/s"],
            ),
            Case(
                "dm",
                str(dm_mp),
                snapkit_argv(
                    "snapshot",
                    "create",
                    str(dm_mp),
                    "--name",
                    "s",
                    "--method",
                    "dm",
                    "--cow-size",
                    "64M",
                    "--cow-dir",
                    cow,
                ),
                snapkit_argv("snapshot", "discard", "s"),
            ),
            Case(
                "dm-direct",
                str(dm_mp),
                snapkit_argv(
                    "snapshot",
                    "create",
                    str(dm_mp),
                    "--name",
                    "s",
                    "--method",
                    "dm-direct",
                    "--cow-size",
                    "64M",
                    "--cow-dir",
                    cow,
                ),
                snapkit_argv("snapshot", "discard", "s"),
            ),
            Case("freeze", str(lv_mp), snapkit_argv("freeze", str(lv_mp), "--", "true"), []),
            # The floors: the filesystem freeze alone (what every suspend with lockfs costs),
            # then the same after a sync, to see how much of it is flushing dirty data.
            Case("FIFREEZE+FITHAW", str(lv_mp), _floor(lv_mp, sync=False), []),
            Case("sync, FIFREEZE+FITHAW", str(lv_mp), _floor(lv_mp, sync=True), []),
        ]
        results = []
        for case in cases:
            done = []
            for n in range(rounds):
                r = measure(case.name, Path(case.mountpoint) / "probe", case.create)
                log(
                    f"{case.name} round {n + 1}: longest {r.max_ms:.1f} ms, p99 {r.p99_ms:.1f} "
                    f"ms, {r.seconds:.2f} s, {r.writes} writes"
                )
                done.append(r)
                if case.cleanup:
                    run_command(case.cleanup, env=ENV)
            results.append(Summary(case.name, tuple(done)))
        return results
    finally:
        undo = [["umount", mp] for mp in reversed(mounted)]
        undo += [
            snapkit_argv("device", "release", "skbench"),
            ["vgremove", "-q", "-f", VG],
            ["losetup", "-d", loop],
            ["losetup", "-d", raw_loop],
            ["rm", "-rf", str(work)],
        ]
        for argv in undo:
            run_command(argv, check=False, env=ENV)


def as_dict(results: list[Summary]) -> dict[str, Any]:
    base = results[0].max_ms
    methods = {
        s.method: {
            "longest_stall_ms": round(s.max_ms, 2),
            "p99_ms": round(s.p99_ms, 2),
            "command_s": round(s.seconds, 3),
            "ratio_to_lvcreate": round(s.max_ms / base, 3),
            "rounds": [
                {
                    "longest_stall_ms": round(r.max_ms, 2),
                    "p99_ms": round(r.p99_ms, 2),
                    "command_s": round(r.seconds, 3),
                    "writes": r.writes,
                }
                for r in s.rounds
            ],
        }
        for s in results
    }
    dm = next((s for s in results if s.method == "dm"), None)
    goal = None if dm is None else dm.max_ms / base <= GOAL
    return {"methods": methods, "goal": f"dm <= {GOAL}x lvcreate -s", "goal_met": goal}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "probe":
        sys.exit(probe(sys.argv[2]))
    sys.exit("usage: python -m snapkit.bench.freeze_window probe FILE")
