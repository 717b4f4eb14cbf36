"""The consistency campaign: run one scenario in one VM, and the pytest plugin around it.

``run_scenario`` boots one throwaway guest with the scenario's disks, runs the whole scenario
in ONE guest process (vmtests/guest/scenario.py, exec fast path, no agent), reads back its JSON
and its artifacts (a tar the guest writes onto a dedicated disk) and asks the oracle for the
verdict.

As a pytest plugin (``pytest -p vmtests.campaign tests/campaign``, which is what ``vmtest run``
does) it parametrizes ``test_scenario`` with the chosen scenarios, each a test with a readable
id, so pytest-xdist spreads them over VMs; every result travels to the controller in the test
report's ``user_properties`` and is collected there into results.json, junit.xml and
report.html, with a live progress display while it runs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from vmtests import guest
from vmtests.campaign import oracle, scenarios
from vmtests.campaign.oracle import Result
from vmtests.campaign.scenarios import Scenario

if TYPE_CHECKING:
    from vmtests.vm.image import Image
    from vmtests.vm.qemu import Accel

RESULT_KEY = "campaign_result"
SCENARIO_TIMEOUT_S = 300.0
LVM_DISK_MIB = 400
PLAIN_DISK_MIB = 200
OUT_DISK_MIB = 1024
TREE = Path(__file__).resolve().parents[2]


# -- which methods snapkit has -------------------------------------------------------------
@functools.cache
def snapkit_methods() -> frozenset[str]:
    """The ``--method`` choices of the working tree's ``snapkit snapshot create`` (the guest runs
    this same tree), or nothing when that command does not exist yet."""
    proc = subprocess.run(
        [sys.executable, "-m", "snapkit", "snapshot", "create", "--help"],
        capture_output=True,
        text=True,
        cwd=TREE,
        check=False,
    )
    match = re.search(r"--method \{([^}]*)\}", proc.stdout)
    return frozenset(match.group(1).split(",")) if proc.returncode == 0 and match else frozenset()


def why_not_runnable(scenario: Scenario) -> str:
    if scenario.is_control:
        return ""
    have = snapkit_methods()
    if not have:
        return "snapkit has no 'snapshot create' command yet (issue 4)"
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
    failure: a lost VM is a failing result with the console log kept."""
    from vmtests.vm import execute
    from vmtests.vm.errors import VmError

    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    spec = json.dumps(scenario.guest_spec())
    out, err = bytearray(), bytearray()
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
            problem = f"VM lost: {exc}"
        duration = time.monotonic() - t0
        (artifacts / "runner.log").write_bytes(bytes(err))
        with contextlib.suppress(OSError):
            shutil.copy(work / "console.log", artifacts / "console.log")
        _unpack(work / "out.raw", artifacts)
    raw = _last_json(out.decode(errors="replace"))
    if raw is None:
        return oracle.lost_vm(
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


# -- the pytest plugin ---------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("campaign", "snapkit consistency campaign")
    g.addoption("--matrix", default="full", choices=scenarios.MATRICES)
    g.addoption(
        "--scenario",
        action="append",
        default=[],
        metavar="ID",
        help="run only this scenario (repeatable)",
    )
    g.addoption("--seed", type=int, default=None, help="override every scenario's seed")
    g.addoption("--shard", default=None, metavar="K/N", help="run the K-th of N slices")
    g.addoption("--report", default="report", metavar="DIR", help="report folder")
    g.addoption("--live", action="store_true", help="live progress display (rich)")


def chosen(config: pytest.Config) -> list[Scenario]:
    return scenarios.select(
        config.getoption("--matrix"),
        ids=config.getoption("--scenario"),
        seed=config.getoption("--seed"),
        shard_spec=config.getoption("--shard"),
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scenario" in metafunc.fixturenames:
        picked = chosen(metafunc.config)
        metafunc.parametrize("scenario", picked, ids=[s.id for s in picked])


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return  # results are collected on the controller only
    from vmtests.campaign.live import Collector

    collector = Collector(Path(config.getoption("--report")), live=config.getoption("--live"))
    config.pluginmanager.register(collector, "campaign-collector")


@pytest.fixture
def campaign_run(request: pytest.FixtureRequest, vm_image: Image, vm_accel: Accel) -> Any:
    """Runs a scenario and hands its result to the controller (see Collector)."""
    folder = Path(request.config.getoption("--report")).resolve() / "scenarios"

    def run(scenario: Scenario) -> Result:
        reason = why_not_runnable(scenario)
        if reason:
            result = oracle.skipped(scenario, reason)
        else:
            result = run_harnessed(scenario, vm_image, vm_accel, folder / scenario.id)
        request.node.user_properties.append((RESULT_KEY, json.dumps(result.to_json())))
        return result

    return run
