"""Power cuts, host side (issue 6, item 1): arm in one VM, kill QEMU, judge in the next.

A cut point is (filesystem, method, phase, where): *where* is either a plan step (flow's test
hook pauses the operation before it, and the cut lands there, exactly) or a delay chosen by the
seed (the cut lands wherever the operation, or the kernel's merge, happens to be). Both disks
are raw files in a folder that outlives the first QEMU: a new Session on them is the reboot.
The guest half (``vmtests/guest/faults.py``) says what is checked after the reboot.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GUEST = "/src/vmtests/guest/faults.py"
FILESYSTEMS = ("ext4", "xfs", "btrfs")
ORIGIN_MIB, KEEP_MIB = 256, 160
# Plan lengths (flow.py numbers steps from 1, as --dry-run shows them): dm's first create,
# and dm's merge in two plans -- the start (remove, load, suspend, resume) and the finish.
DM_CREATE_STEPS = 11
DM_MERGE_STEPS = ((1, 4), (2, 6))
PAUSE_TIMEOUT_S = 120.0


@dataclass(frozen=True, order=True)
class Cut:
    fs: str
    method: str  # "dm" or "lvm"
    phase: str  # "create" or "merge"
    plan: int = 1  # which plan of the command the step is in
    step: int = 0  # pause before this step; 0: cut after delay_ms instead
    delay_ms: int = 0

    @property
    def id(self) -> str:
        where = f"p{self.plan}s{self.step}" if self.step else f"t{self.delay_ms}ms"
        return f"{self.fs}-{self.method}-{self.phase}-{where}"

    def spec(self) -> dict[str, Any]:
        return {"fs": self.fs, "method": self.method, "phase": self.phase, "plan": self.plan,
                "step": self.step}  # fmt: skip


def all_cuts(seed: int = 6) -> list[Cut]:
    """Every point the matrix knows, in a stable order: each step of dm's create and merge
    plans on every filesystem, and seeded delays for lvm (one lvcreate/lvconvert step: the
    cut must land inside it) and for dm's kernel-side merge."""
    rng = random.Random(seed)
    cuts: list[Cut] = []
    for fs in FILESYSTEMS:
        cuts += [Cut(fs, "dm", "create", 1, s) for s in range(1, DM_CREATE_STEPS + 1)]
        cuts += [Cut(fs, "dm", "merge", p, s) for p, n in DM_MERGE_STEPS for s in range(1, n + 1)]
        cuts += [Cut(fs, "lvm", "create", delay_ms=rng.randrange(0, 2500)) for _ in range(4)]
        cuts += [Cut(fs, "lvm", "merge", delay_ms=rng.randrange(0, 3000)) for _ in range(2)]
        cuts += [Cut(fs, "dm", "merge", delay_ms=rng.randrange(0, 1500)) for _ in range(2)]
    return cuts


def choose(n: int | None, seed: int = 6) -> list[Cut]:
    """``n`` cut points spread over the matrix by the seed (all of them if ``n`` is None)."""
    cuts = all_cuts(seed)
    if n is None or n >= len(cuts):
        return cuts
    picked = set(random.Random(seed).sample(range(len(cuts)), n))
    return [c for i, c in enumerate(cuts) if i in picked]


def run_cut(cut: Cut, boot: Callable[..., Any], folder: Path) -> dict[str, Any]:
    """Arm, cut, reboot, judge. ``boot(disks=..., name=...)`` returns an entered Session."""
    from vmtests.machine import make_disk
    from vmtests.qemu import Disk

    folder.mkdir(parents=True, exist_ok=True)
    disks = [
        Disk(make_disk(folder / "origin.raw", ORIGIN_MIB << 20), "disk0"),
        Disk(make_disk(folder / "keep.raw", KEEP_MIB << 20), "disk1"),
    ]
    spec = json.dumps(cut.spec())
    t0 = time.monotonic()
    first = boot(disks=disks, name="armed")
    armed = first.run(["python3", "-I", "-S", GUEST, "arm", spec], timeout=600)
    if armed.returncode != 0:
        first.power_cut()
        return _failed(cut, t0, "arm failed: " + armed.stderr.decode(errors="replace")[-1500:])
    paused = True
    if cut.step:
        paused = _wait_pause(first)
    else:
        time.sleep(cut.delay_ms / 1000)
    first.power_cut()
    second = boot(disks=disks, name="rebooted")
    judged = second.run(["python3", "-I", "-S", GUEST, "judge", spec], timeout=900)
    second.power_cut()
    log = judged.stderr.decode(errors="replace")
    (folder / "judge.log").write_text(log)
    if judged.returncode != 0:
        return _failed(cut, t0, "judge failed: " + log[-1500:])
    doc = dict(json.loads(judged.stdout.decode().strip().splitlines()[-1]))
    if not paused:
        doc["problems"] = [*doc["problems"], "the operation never reached its pause step"]
        doc["ok"] = False
    return {**asdict(cut), "id": cut.id, "seconds": round(time.monotonic() - t0, 1), **doc}


def _wait_pause(vm: Any) -> bool:
    deadline = time.monotonic() + PAUSE_TIMEOUT_S
    while time.monotonic() < deadline:
        if vm.run(["grep", "-q", "test pause", "/tmp/op.err"]).returncode == 0:
            return True
        time.sleep(0.1)
    return False


def _failed(cut: Cut, t0: float, why: str) -> dict[str, Any]:
    return {**asdict(cut), "id": cut.id, "seconds": round(time.monotonic() - t0, 1),
            "ok": False, "problems": [why]}  # fmt: skip


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of issue 6, item 6, for results.json and RELIABILITY.md."""
    per: dict[str, int] = {}
    for r in results:
        key = f"{r['phase']}/{r['fs']}/{r['method']}"
        per[key] = per.get(key, 0) + 1
    return {
        "cuts": len(results),
        "cuts_ok": sum(bool(r.get("ok")) for r in results),
        "per_phase_fs_method": dict(sorted(per.items())),
        "acked_checked": sum(int(r.get("acked_checked", 0)) for r in results),
        "acked_lost": sum(int(r.get("acked_lost", 0)) for r in results),
        "snapshots_survived": sum(r.get("snapshot") == "active" for r in results),
        "snapshots_absent": sum(r.get("snapshot") == "absent" for r in results),
        "suspended_left": sum(len(r.get("suspended", [])) for r in results),
        "failures": [f"{r['id']}: {'; '.join(r['problems'])}" for r in results if not r.get("ok")],
    }


def sessions(image: Any, accel: Any, root: Path) -> Iterator[Callable[..., Any]]:
    """A boot function for ``run_cut`` outside pytest; every Session is closed at the end."""
    import contextlib

    from vmtests.session import Session

    with contextlib.ExitStack() as stack:

        def boot(*, disks: list[Any], name: str) -> Any:
            return stack.enter_context(Session(image, root / name, accel=accel, disks=disks))

        yield boot


def run_matrix(cuts: int | None, seed: int, workers: int, report: Path, accel: str) -> int:
    """``vmtest run --matrix faults [--cuts N]``: run the cuts over ``workers`` VMs at a time,
    write ``report/results.json`` (every cut and the summary), exit 0 only if all held."""
    import shutil
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from vmtests import accel as accel_mod
    from vmtests import image as image_mod

    img = image_mod.find()
    acc = accel_mod.choose(accel, img)
    chosen = choose(cuts, seed)
    report.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    def one(cut: Cut) -> dict[str, Any]:
        folder = report / "cuts" / cut.id
        shutil.rmtree(folder, ignore_errors=True)
        try:
            for boot in sessions(img, acc, folder):
                result = run_cut(cut, boot, folder)
        except Exception as exc:  # a lost VM is a failed cut, reported, never a crash
            result = _failed(cut, t0, f"{type(exc).__name__}: {exc}")
        for raw in folder.glob("*.raw"):
            raw.unlink()
        mark = "ok  " if result.get("ok") else "FAIL"
        print(f"{mark} {cut.id} ({result['seconds']} s)", flush=True)
        return result

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, chosen))
    figures = {**summary(results), "seconds": round(time.monotonic() - t0, 1), "seed": seed}
    doc = {"matrix": "faults", "summary": figures, "cuts": results}
    (report / "results.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "failures"}, indent=2))
    for line in figures["failures"]:
        print(f"FAILED {line}", file=sys.stderr)
    return 0 if figures["cuts_ok"] == figures["cuts"] else 1


__all__ = ["Cut", "all_cuts", "choose", "run_cut", "run_matrix", "sessions", "summary"]
