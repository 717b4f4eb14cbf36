"""pytest plugin: options, markers and fixtures. The engine lives in the other vmtests modules
and is imported lazily, so loading this plugin costs nothing for tests that boot no VM.

Fixtures:
  vm          a fresh guest per test (``vmtests.session.Session``), ended after the test
  vm_factory  boots more guests in one test: ``vm_factory(disks=[...], memory_mib=...)``
  vm_image    the guest image (built once per run; skips with a hint if it cannot be)
  vm_accel    the accelerator chosen for this run

Every VM keeps its console log and QEMU argv under ``--vm-artifacts/<test id>/``; they are
deleted after a passing test unless ``--vm-keep-artifacts`` is given.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from vmtests.image import Image
    from vmtests.qemu import Accel, Disk
    from vmtests.session import Session


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vmtests", "throwaway QEMU guests")
    group.addoption("--vm-accel", default="auto", choices=("auto", "kvm", "tcg"),
                    help="accelerator: auto uses KVM only if a probe boot proves it works")  # fmt: skip
    group.addoption("--vm-mem", default=1024, type=int, metavar="MIB",
                    help="guest memory in MiB (default 1024)")  # fmt: skip
    group.addoption("--vm-keep-artifacts", action="store_true",
                    help="keep console logs and disks of passing tests too")  # fmt: skip
    group.addoption("--vm-artifacts", default="results/vm", metavar="DIR",
                    help="where per-test VM artifacts go (default results/vm)")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: needs a QEMU guest (boots one or more VMs)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def vm_image() -> Image:
    from vmtests import image

    try:
        return image.find()
    except image.ImageError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def vm_accel(request: pytest.FixtureRequest, vm_image: Image) -> Accel:
    from vmtests import accel

    return accel.choose(request.config.getoption("--vm-accel"), vm_image)


def _safe(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")[-150:]


@pytest.fixture
def vm_artifacts(request: pytest.FixtureRequest) -> Iterator[Path]:
    """This test's artifact folder; removed after a pass unless --vm-keep-artifacts."""
    root = Path(request.config.getoption("--vm-artifacts")).resolve()
    folder = root / _safe(request.node.nodeid)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    yield folder
    failed = request.node.stash.get(_FAILED, True)
    if not failed and not request.config.getoption("--vm-keep-artifacts"):
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def vm_factory(
    request: pytest.FixtureRequest, vm_image: Image, vm_accel: Accel, vm_artifacts: Path
) -> Iterator[Callable[..., Session]]:
    from vmtests.session import Session

    sessions: list[Session] = []
    mem = request.config.getoption("--vm-mem")

    def boot(*, disks: list[Disk] | None = None, memory_mib: int | None = None,
             cpus: int = 1, name: str | None = None) -> Session:  # fmt: skip
        workdir = vm_artifacts / (name or f"vm{len(sessions)}")
        session = Session(vm_image, workdir, accel=vm_accel, memory_mib=memory_mib or mem,
                          cpus=cpus, disks=disks or [])  # fmt: skip
        sessions.append(session)
        return session.__enter__()

    try:
        yield boot
    finally:
        for session in reversed(sessions):
            session.__exit__(None, None, None)


@pytest.fixture
def vm(vm_factory: Callable[..., Session]) -> Session:
    """A fresh guest for this test, with no extra disks (make loop devices in /tmp)."""
    return vm_factory()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"vm", "vm_factory"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.vm)
