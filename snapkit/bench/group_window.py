"""``snapkit bench group-window``: how much longer a snapshot group stalls writers than one
snapshot.

One probe per member (freeze-window's: a 4 KiB ``O_DIRECT`` write plus ``fdatasync`` every
millisecond, each in its own process) on ext4 filesystems over devices made by ``snapkit device
prepare`` (``dm``) and over LVs (``lvm``). A case's stall is the longest write, on any member,
that overlapped the create; its baseline, measured in the same run, is a single snapshot of one
member by the same method. Groups of 2 and 4. A group's members share one window (dm: every
origin suspended, then every one resumed; lvm: every member frozen, each lvcreate, every member
thawed), so issue 15 expects the stall to grow far less than linearly with the members; lvm's
window holds one ``lvcreate`` per member, so it grows with them.

It builds everything in a throwaway VG and loop devices over sparse files (in $TMPDIR, tmpfs in
the guest) and removes it afterwards; run it as root where LVM and dm work:
``vmtest exec --mem 2G -- snapkit bench group-window --json``.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapkit.bench.freeze_window import ENV, measure_many, sh, snapkit_argv
from snapkit.run import run as run_command

SIZES = (1, 2, 4)
MEMBER_MIB = 96
VG = "skgroup"


@dataclass(frozen=True)
class Case:
    method: str
    members: int
    stalls_ms: tuple[float, ...]  # per round: the longest write on any member
    seconds: tuple[float, ...]  # per round: the whole create command

    @property
    def stall_ms(self) -> float:
        return statistics.median(self.stalls_ms)

    @property
    def command_s(self) -> float:
        return statistics.median(self.seconds)


def _create(method: str, mountpoints: list[Path], cow: Path) -> list[str]:
    argv = ["snapshot", "create", *map(str, mountpoints), "--name", "s", "--method", method]
    argv += ["--cow-size", "32M", "--max-freeze", "120"]
    return snapkit_argv(*argv, *(["--cow-dir", str(cow)] if method == "dm" else []))


def run(rounds: int, log: Any) -> list[Case]:
    work = Path(tempfile.mkdtemp(prefix="snapkit-bench-"))
    loops: list[str] = []
    mounted: list[str] = []
    prepared: list[str] = []
    try:
        pv = work / "pv.img"
        with open(pv, "wb") as f:
            f.truncate((max(SIZES) * MEMBER_MIB * 2 + 64) << 20)
        loops.append(sh("losetup", "--show", "-f", str(pv)).strip())
        sh("pvcreate", "-q", loops[0])
        sh("vgcreate", "-q", VG, loops[0])
        where: dict[str, list[Path]] = {"dm": [], "lvm": []}
        for k in range(max(SIZES)):
            raw = work / f"raw{k}.img"
            with open(raw, "wb") as f:
                f.truncate(MEMBER_MIB << 20)
            loops.append(sh("losetup", "--show", "-f", str(raw)).strip())
            sh(*snapkit_argv("device", "prepare", loops[-1], "--name", f"{VG}{k}"))
            prepared.append(f"{VG}{k}")
            sh("lvcreate", "-q", "-y", "-L", f"{MEMBER_MIB}M", "-n", f"lv{k}", VG)
            for method, device in (("dm", f"/dev/mapper/{VG}{k}"), ("lvm", f"/dev/{VG}/lv{k}")):
                mountpoint = work / f"{method}{k}"
                mountpoint.mkdir()
                sh("mkfs.ext4", "-q", device)
                sh("mount", device, str(mountpoint))
                mounted.append(str(mountpoint))
                where[method].append(mountpoint)
        cow = work / "cow"
        cow.mkdir()
        cases = []
        for method in ("dm", "lvm"):
            for size in SIZES:
                members = where[method][:size]
                stalls, seconds = [], []
                for n in range(rounds):
                    probes = [m / "probe" for m in members]
                    got = measure_many(f"{method} x{size}", probes, _create(method, members, cow))
                    stalls.append(max(r.max_ms for r in got))
                    seconds.append(got[0].seconds)
                    log(
                        f"{method} x{size} round {n + 1}: longest {stalls[-1]:.1f} ms (per "
                        f"member {', '.join(f'{r.max_ms:.1f}' for r in got)}), "
                        f"{seconds[-1]:.2f} s"
                    )
                    sh(*snapkit_argv("snapshot", "discard", "s"))
                cases.append(Case(method, size, tuple(stalls), tuple(seconds)))
        return cases
    finally:
        undo = [["umount", mp] for mp in reversed(mounted)]
        undo += [snapkit_argv("device", "release", name) for name in prepared]
        undo += [["vgremove", "-q", "-f", VG], *(["losetup", "-d", lo] for lo in loops)]
        undo.append(["rm", "-rf", str(work)])
        for argv in undo:
            run_command(argv, check=False, env=ENV)


def as_dict(cases: list[Case]) -> dict[str, Any]:
    """Each case with its ratio to the same method's single snapshot, from the same run."""
    single = {c.method: c.stall_ms for c in cases if c.members == 1}
    return {
        "cases": [
            {
                "method": c.method,
                "members": c.members,
                "longest_stall_ms": round(c.stall_ms, 2),
                "command_s": round(c.command_s, 3),
                "ratio_to_single": round(c.stall_ms / single[c.method], 3),
                "rounds_ms": [round(s, 2) for s in c.stalls_ms],
            }
            for c in cases
        ],
        "baseline": "the same method's single snapshot of one member, in the same run",
    }


__all__ = ["Case", "as_dict", "run"]
