"""One campaign scenario in one VM.

``run_scenario`` boots one throwaway guest with the scenario's disks, runs the whole scenario
in ONE guest process (``vmtests.guest.campaign.scenario``, exec fast path, no agent), reads back
its JSON and its artifacts (a tar the guest writes onto a dedicated disk) and asks the oracle
for the verdict. The pytest plugin that runs it per scenario is ``vmtests.campaign.plugin``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapkit.methods import registry
from vmtests import guest
from vmtests.campaign import oracle
from vmtests.campaign.oracle import Result
from vmtests.campaign.scenarios import WITHOUT_SNAPKIT, Scenario

if TYPE_CHECKING:
    from vmtests.vm.image import Image
    from vmtests.vm.qemu import Accel

SCENARIO_TIMEOUT_S = 300.0
LVM_DISK_MIB = 400
PLAIN_DISK_MIB = 200
OUT_DISK_MIB = 1024


# -- which methods snapkit has -------------------------------------------------------------
def snapkit_methods() -> frozenset[str]:
    """The ``--method`` names of the working tree's snapkit (the guest runs this same tree)."""
    return frozenset(registry.names())


def why_not_runnable(scenario: Scenario) -> str:
    """Why this scenario cannot run against this snapkit ("" when it can)."""
    if scenario.is_control or scenario.method in WITHOUT_SNAPKIT:
        return ""
    have = snapkit_methods()
    if scenario.snapkit_method not in have:
        return f"snapkit has no method {scenario.snapkit_method!r} yet (issue 4)"
    if scenario.method in ("lvm", "lvm-thin", "freeze-lvm") and "lvm" not in have:
        return "snapkit has no 'lvm' method yet (issue 4)"
    return ""


# -- one scenario in one VM ----------------------------------------------------------------
def _disks(scenario: Scenario, folder: Path) -> list[Any]:
    from vmtests.vm.machine import make_disk
    from vmtests.vm.qemu import Disk

    lvm = scenario.method in ("lvm", "lvm-thin", "freeze-lvm")
    size = (LVM_DISK_MIB if lvm else PLAIN_DISK_MIB) << 20
    if scenario.group:  # one disk per member (vmtests/guest/campaign/group.py)
        members = range(len(scenario.group.split("+")))
        disks = [Disk(make_disk(folder / f"member{k}.raw", size), f"member{k}") for k in members]
    else:
        disks = [Disk(make_disk(folder / "disk0.raw", size), "disk0")]
    if scenario.is_control:
        disks.append(Disk(make_disk(folder / "disk1.raw", size), "disk1"))
    disks.append(Disk(make_disk(folder / "out.raw", OUT_DISK_MIB << 20), "out"))
    return disks


class UnsafeArchive(tarfile.TarError):
    """A member that could land outside the folder, or is not a plain file or directory."""


def safe_extract(tar: tarfile.TarFile, dest: Path) -> list[str]:
    """Extract the guest's artifact tar into ``dest``: regular files and directories only,
    each inside ``dest``. The guest is the code under test and its disk is written by it, so
    the archive is untrusted. Done by hand, not with ``extractall(filter="data")``: that
    argument exists only from Python 3.11.4, and Debian 12's python3 is 3.11.2. Every member is
    checked before anything is written; one that is absolute, climbs out with ``..``, is a
    link (of any kind: none is needed, and a symlink is how a later member escapes) or a
    device or fifo refuses the whole archive (``UnsafeArchive``). Files get mode 0644, not the
    archive's. Returns the names written."""
    root = dest.resolve()
    plan: list[tuple[tarfile.TarInfo, Path]] = []
    for member in tar.getmembers():
        target = (root / member.name).resolve()
        if member.name.startswith("/") or ".." in Path(member.name).parts:
            raise UnsafeArchive(f"{member.name!r}: an absolute or climbing path")
        if target == root or not target.is_relative_to(root):
            raise UnsafeArchive(f"{member.name!r}: outside {dest}")
        if not (member.isreg() or member.isdir()):
            raise UnsafeArchive(f"{member.name!r}: not a regular file or directory")
        plan.append((member, target))
    for member, target in plan:
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(member)
        if src is None:
            raise UnsafeArchive(f"{member.name!r}: no data")
        with src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
    return [member.name for member, _ in plan]


def _unpack(out_disk: Path, dest: Path) -> None:
    """The guest's artifacts, or a note in ``unpack.log`` saying why there are none."""
    try:
        with tarfile.open(out_disk) as tar:
            safe_extract(tar, dest)
    except (tarfile.TarError, OSError) as exc:
        (dest / "unpack.log").write_text(f"artifacts not unpacked: {type(exc).__name__}: {exc}\n")


def run_scenario(
    scenario: Scenario, image: Image, accel: Accel, artifacts: Path, *, keep_all: bool = False
) -> Result:
    """Boot, run the scenario in the guest, collect artifacts, judge. Never raises for a VM
    failure: a lost VM is a ``lost`` result with the console log kept; any other exception is
    a bug in the harness and propagates."""
    from vmtests.vm import execute
    from vmtests.vm.errors import VmError

    if scenario.fs == "zfs":  # built once per kernel layer, on the first ZFS row that runs
        from vmtests.vm.guest_image import with_zfs

        image = with_zfs(image)
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    spec = json.dumps(scenario.guest_spec())
    out, err = bytearray(), bytearray()
    lost = False
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vmtest-campaign-") as tmp:
        work = Path(tmp)
        disks = _disks(scenario, work)
        try:
            code = execute.run(
                image,
                guest.command("campaign.scenario", spec),
                work,
                stdout=out.extend,
                stderr=err.extend,
                stdin_data=b"",
                accel=accel,
                disks=disks,
                timeout=SCENARIO_TIMEOUT_S,
            ).returncode
            problem = "" if code == 0 else f"the guest runner exited {code}"
        except VmError as exc:
            lost, problem = True, f"VM lost: {exc}"
        duration = time.monotonic() - t0
        (artifacts / "runner.log").write_bytes(bytes(err))
        with contextlib.suppress(OSError):
            shutil.copy(work / "console.log", artifacts / "console.log")
        _unpack(work / "out.raw", artifacts)
    raw = _last_json(out.decode(errors="replace"))
    if raw is None and lost:
        return oracle.lost_vm(scenario, duration, problem, str(artifacts))
    if raw is None:
        return oracle.no_result(
            scenario, duration, problem or "the guest printed no result", str(artifacts)
        )
    result = oracle.judge(scenario, raw, duration, str(artifacts))
    if result.verdict is oracle.Verdict.PASS and not keep_all:
        with contextlib.suppress(OSError):
            (artifacts / "ledger.jsonl").unlink()
    return result


def run_harnessed(
    scenario: Scenario,
    image: Image,
    accel: Accel,
    artifacts: Path,
    *,
    runner: Callable[[Scenario, Image, Accel, Path], Result] | None = None,
) -> Result:
    """``run_scenario``, but a crash of the harness itself becomes an ``error`` result that
    names the exception (the traceback goes to ``harness.log``), instead of a test error the
    report could only call "errored before a result". ``runner`` is for the unit tests."""
    t0 = time.monotonic()
    try:
        return (runner or run_scenario)(scenario, image, accel, artifacts)
    except Exception as exc:
        with contextlib.suppress(OSError):
            artifacts.mkdir(parents=True, exist_ok=True)
            (artifacts / "harness.log").write_text(traceback.format_exc())
        return oracle.harness_error(scenario, exc, time.monotonic() - t0, str(artifacts))


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    return value
    return None
