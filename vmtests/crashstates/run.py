"""Crash states, executed: the kinds spread over ``-n`` guests, each guest records and judges
its kinds one after the other (``vmtests/guest/crashstates/main.py``).

One boot per group of kinds, not per state: a boot under TCG costs seconds and a state is
judged on a throwaway layer in the running guest. A lost VM fails the states of its kinds
(the kind reports the error), never the run. A kind with a failing state keeps its log disk,
its facts and the guest's log under ``REPORT/logs/KID/``: the log alone rebuilds any of its
states, which is what a replay line names.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmtests import guest
from vmtests.vm.errors import VmError

FILESYSTEMS = ("ext4", "xfs", "btrfs")
METHODS = ("dm", "dm-direct", "lvm")
# opt-in (--methods): two filesystems under one snapshot group (vmtests/guest/crashstates/
# group.py); not btrfs, which a dm suspend does not freeze (dm groups refuse it)
GROUP_METHODS = ("group-dm", "group-dm-direct", "group-lvm")
GROUP_FILESYSTEMS = ("ext4", "xfs")
# only when named (--methods, --operations): the default run's kinds, lifecycle and >= 1,000
# states in < 30 minutes stay as measured
OPT_IN_METHODS = ("lvm-thin", *GROUP_METHODS)
OPT_IN_OPERATIONS = ("extend",)  # dm and lvm kinds only (vmtests/guest/crashstates/extend.py)
_FS = {"ext4": "e4", "xfs": "xf", "btrfs": "bt"}
_METHOD = {"dm": "dm", "dm-direct": "dd", "lvm": "lv", "lvm-thin": "lt"}
_METHOD.update({"group-dm": "gd", "group-dm-direct": "gx", "group-lvm": "gl"})
DISK_MIB, LOG_MIB = 360, 2048  # as vmtests/guest/crashstates/layout.py lays them out
# the replay disk (up to DISK_MIB, in practice what the log wrote), the layer's COW and the
# log's pages live in the guest's RAM
MEMORY_MIB = 1536
Say = Callable[[str], None]


def kid(fs: str, method: str) -> str:
    return _FS[fs] + _METHOD[method]


@dataclass(frozen=True)
class Kind:
    fs: str
    method: str

    @property
    def kid(self) -> str:
        return kid(self.fs, self.method)

    def spec(self) -> dict[str, str]:
        return {"kid": self.kid, "fs": self.fs, "method": self.method}


def kinds(filesystems: tuple[str, ...], methods: tuple[str, ...]) -> list[Kind]:
    return [
        Kind(fs, m)
        for fs in filesystems
        for m in methods
        if m not in GROUP_METHODS or fs in GROUP_FILESYSTEMS
    ]


@dataclass
class Runner:
    image: Any
    accel: Any
    report: Path
    say: Say = print
    operations: tuple[str, ...] = ()  # of OPT_IN_OPERATIONS

    def group(self, group: list[Kind], budget: int, seed: int) -> list[dict[str, Any]]:
        """One boot: record and judge every kind of ``group``; one result per kind."""
        spec: dict[str, Any] = {"kinds": [k.spec() for k in group], "states": budget, "seed": seed}
        if self.operations:
            spec["operations"] = list(self.operations)
        return self._boot(group, spec, fresh=True)

    def replay(self, folder: Path, cut: int, seed: int) -> list[dict[str, Any]]:
        """One boot on a kept log: judge the state the replay line names."""
        meta = json.loads((folder / "kind.json").read_text())
        k = Kind(meta["fs"], meta["method"])
        facts = json.loads((folder / "facts.json").read_text())
        spec = {"kinds": [k.spec()], "replay": {"cut": cut, "seed": seed}, "facts": facts}
        return self._boot([k], spec, fresh=False, log_from=folder / "log.raw")

    def _boot(
        self, group: list[Kind], spec: dict[str, Any], *, fresh: bool, log_from: Path | None = None
    ) -> list[dict[str, Any]]:
        from vmtests.vm.machine import make_disk
        from vmtests.vm.qemu import Disk, DiskFormat
        from vmtests.vm.session import Session

        name = "-".join(k.kid for k in group)
        work = self.report / "boots" / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        disks = []
        for k in group:
            for role, mib in (("d", DISK_MIB), ("l", LOG_MIB)):  # the replay disk: guest tmpfs
                if role == "l" and log_from is not None:  # the kept log stays untouched
                    path = make_disk(work / "log.qcow2", mib << 20, "qcow2", log_from.resolve())
                    disks.append(Disk(path, f"{k.kid}-{role}", DiskFormat.QCOW2))
                else:
                    path = make_disk(work / f"{k.kid}-{role}.raw", mib << 20)
                    disks.append(Disk(path, f"{k.kid}-{role}"))
        t0 = time.monotonic()
        argv = guest.command("crashstates.main", json.dumps(spec))
        timeout = 3600.0 * len(group)
        try:
            with Session(
                self.image, work / "boot", accel=self.accel, disks=disks, memory_mib=MEMORY_MIB
            ) as vm:
                done = vm.run(argv, timeout=timeout)
                vm.power_cut()
            (work / "guest.log").write_bytes(done.stderr)
            if not done.ok:
                raise VmError(f"the guest exited {done.returncode}: {done.stderr[-600:]!r}")
            out: list[dict[str, Any]] = json.loads(done.stdout.decode().strip().splitlines()[-1])[
                "kinds"
            ]
        except VmError as exc:
            why = f"{type(exc).__name__}: {exc}"[-1500:]
            out = [{**k.spec(), "error": why, "states": []} for k in group]
        seconds = round(time.monotonic() - t0, 1)
        for k, res in zip(group, out, strict=False):
            res["boot_s"] = seconds
            self._keep(k, res, work, fresh)
            n = len(res.get("states", []))
            self.say(
                f"kind {k.kid} ({k.fs} {k.method}): {n} states judged in {seconds} s"
                + (f" -- ERROR {res['error'][:300]}" if "error" in res else "")
            )
        for f in [*work.glob("*.raw"), *work.glob("*.qcow2")]:
            f.unlink()
        return out

    def _keep(self, k: Kind, res: dict[str, Any], work: Path, fresh: bool) -> None:
        """A kind with a failing real state (or an error) keeps what replays it."""
        bad = "error" in res or any(
            not s["ok"] and not s.get("control") for s in res.get("states", [])
        )
        if not (bad and fresh):
            return
        keep = self.report / "logs" / k.kid
        keep.mkdir(parents=True, exist_ok=True)
        log_disk = work / f"{k.kid}-l.raw"
        if log_disk.exists():
            shutil.move(log_disk, keep / "log.raw")
        (keep / "kind.json").write_text(json.dumps(k.spec()) + "\n")
        (keep / "facts.json").write_text(json.dumps(res.get("facts", {}), indent=2) + "\n")
        if (work / "guest.log").exists():
            shutil.copy(work / "guest.log", keep / "guest.log")
        res["kept"] = str(keep)


__all__ = [
    "FILESYSTEMS",
    "GROUP_FILESYSTEMS",
    "GROUP_METHODS",
    "METHODS",
    "OPT_IN_METHODS",
    "OPT_IN_OPERATIONS",
    "Kind",
    "Runner",
    "kid",
    "kinds",
]
