"""pytest plugin: options, markers and fixtures only. The engine lives in ``vmtests.vm`` and is
imported lazily, so loading this plugin costs nothing for tests that boot no VM.

Fixtures:
  vm          a fresh guest per test (``vmtests.session.Session``), ended after the test
  vm_factory  boots more guests in one test: ``vm_factory(disks=[...], memory_mib=...)``
  vm_host     a pytest-testinfra ``Host`` on the ``vm`` guest (vm_host.run, .file, ...);
              not ``host``, which is pytest-testinfra's own fixture (over --hosts)
  vm_image    the guest image (built once per run; skips with a hint if it cannot be)
  vm_zfs      a fresh guest whose kernel has ZFS's module (vm_zfs_image: the image with the
              module built for its kernel, on the first ask, and cached with the kernel)
  vm_accel    the accelerator chosen for this run
  vm_artifacts  this test's artifact folder (put disk images here)

Artifacts go to ``<--vm-artifacts>/<run id>/<test>/<vm name>/`` (console log, QEMU argv and
log, disks); ``<--vm-artifacts>/latest`` points at the newest run. The run id is made once by
the controller and handed to pytest-xdist workers, and each test folder is claimed with an
exclusive ``mkdir``, so neither workers nor concurrent runs can share or delete each other's
folders. A passing test's folder is deleted unless ``--vm-keep-artifacts`` is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import testinfra.host

    from vmtests.vm.image import Image
    from vmtests.vm.qemu import Accel, Disk
    from vmtests.vm.session import Session


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vmtests", "throwaway QEMU guests")
    group.addoption(
        "--vm-accel",
        default="auto",
        choices=("auto", "kvm", "tcg"),
        help="accelerator: auto uses KVM only if a probe boot proves it works",
    )
    group.addoption(
        "--vm-kernel",
        default=None,
        metavar="SPEC",
        help="the guests' kernel: debian:SUITE[/FLAVOUR] or a PATH (default $VMTEST_KERNEL, "
        "else the recipe's suite)",
    )
    group.addoption(
        "--vm-modules", default=None, metavar="DIR", help="with --vm-kernel PATH: its modules"
    )
    group.addoption(
        "--vm-mem", default=1024, type=int, metavar="MIB", help="guest memory in MiB (default 1024)"
    )
    group.addoption(
        "--vm-cold-boot",
        action="store_true",
        help="boot every guest's kernel, never from a saved state (also $VMTEST_COLD_BOOT=1)",
    )
    group.addoption(
        "--vm-keep-artifacts",
        action="store_true",
        help="keep console logs and disks of passing tests too",
    )
    group.addoption(
        "--vm-artifacts",
        default="results/vm",
        metavar="DIR",
        help="where per-run, per-test VM artifacts go (default results/vm)",
    )


_RUN_KEY = "vmtests_run_id"
_RUN = pytest.StashKey[str]()
_FAILED = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: needs a QEMU guest (boots one or more VMs)")
    if config.getoption("--vm-cold-boot"):
        os.environ["VMTEST_COLD_BOOT"] = "1"  # vmtests.vm.resume.COLD_ENV, for every worker
    worker_input = getattr(config, "workerinput", None)
    if worker_input is not None and _RUN_KEY in worker_input:
        config.stash[_RUN] = worker_input[_RUN_KEY]
    else:
        config.stash[_RUN] = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: every worker writes into the controller's run folder."""
    node.workerinput[_RUN_KEY] = node.config.stash[_RUN]


def pytest_unconfigure(config: pytest.Config) -> None:
    if getattr(config, "workerinput", None) is None:
        run = _run_folder(config)
        with contextlib.suppress(OSError):
            run.rmdir()  # only succeeds when every test passed and nothing was kept
            latest = run.parent / "latest"
            if os.readlink(latest) == run.name:
                latest.unlink()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" or report.failed:
        item.stash[_FAILED] = item.stash.get(_FAILED, False) or report.failed
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"vm", "vm_factory", "vm_host", "vm_zfs"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.vm)


def _run_folder(config: pytest.Config) -> Path:
    root = Path(config.getoption("--vm-artifacts"))
    if not root.is_absolute():
        root = config.rootpath / root
    return root / config.stash[_RUN]


def folder_name(nodeid: str) -> str:
    """A readable, filesystem-safe name for a test; the hash keeps distinct ids distinct."""
    digest = hashlib.sha256(nodeid.encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_.")[-100:] + "-" + digest


def claim_folder(parent: Path, name: str) -> Path:
    """Create and return a new folder under ``parent``; never one that already exists."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        folder = parent / (name if n == 0 else f"{name}.{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise RuntimeError(f"no free artifact folder for {name} under {parent}")


def _point_latest(run: Path) -> None:
    link = run.parent / "latest"
    tmp = run.parent / f".latest-{os.getpid()}"
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run.name)
        tmp.replace(link)


@pytest.fixture(scope="session")
def vm_image(request: pytest.FixtureRequest) -> Image:
    from vmtests.vm import guest_image
    from vmtests.vm.errors import ImageError, KernelError

    modules = request.config.getoption("--vm-modules")
    try:
        return guest_image.prepare(
            request.config.getoption("--vm-kernel"),
            modules=Path(modules) if modules else None,
            build_userland=False,
        )
    except KernelError:
        raise  # a refused kernel is the user's error, not a missing image
    except ImageError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def vm_accel(request: pytest.FixtureRequest, vm_image: Image) -> Accel:
    from vmtests.vm import accel

    return accel.choose(request.config.getoption("--vm-accel"), vm_image)


@pytest.fixture
def vm_artifacts(request: pytest.FixtureRequest) -> Iterator[Path]:
    """This test's own artifact folder; removed after a pass unless --vm-keep-artifacts."""
    run = _run_folder(request.config)
    folder = claim_folder(run, folder_name(request.node.nodeid))
    _point_latest(run)
    yield folder
    failed = request.node.stash.get(_FAILED, True)
    if not failed and not request.config.getoption("--vm-keep-artifacts"):
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def vm_factory(
    request: pytest.FixtureRequest, vm_image: Image, vm_accel: Accel, vm_artifacts: Path
) -> Iterator[Callable[..., Session]]:
    """``vm_factory(disks=..., memory_mib=..., cpus=..., name=..., image=...)`` boots one more
    guest (``image``: another flavour of the session's image, e.g. ``vm_zfs_image``)."""
    from vmtests.vm.session import Session

    mem = request.config.getoption("--vm-mem")
    with contextlib.ExitStack() as stack:
        names: set[str] = set()

        def boot(
            *,
            disks: list[Disk] | None = None,
            memory_mib: int | None = None,
            cpus: int = 1,
            name: str | None = None,
            image: Image | None = None,
        ) -> Session:
            name = name or f"vm{len(names)}"
            if name in names:
                raise ValueError(f"a VM named {name!r} was already booted in this test")
            names.add(name)
            session = Session(
                image or vm_image,
                vm_artifacts / name,
                accel=vm_accel,
                memory_mib=memory_mib or mem,
                cpus=cpus,
                disks=disks or [],
            )
            return stack.enter_context(session)

        yield boot


@pytest.fixture
def vm(vm_factory: Callable[..., Session]) -> Session:
    """A fresh guest for this test, with no extra disks (make loop devices in /tmp)."""
    return vm_factory()


@pytest.fixture(scope="session")
def vm_zfs_image(vm_image: Image) -> Image:
    """The session's image with ZFS's module for its kernel: built on the first ask per kernel
    layer (minutes) and cached with it, so only a run with a ZFS test pays for it. A failed
    build fails the test that asked, never skips it."""
    from vmtests.vm.guest_image import with_zfs

    return with_zfs(vm_image)


@pytest.fixture
def vm_zfs(vm_factory: Callable[..., Session], vm_zfs_image: Image) -> Session:
    """A fresh guest whose kernel can ``modprobe zfs`` (zfsutils is in every userland)."""
    return vm_factory(image=vm_zfs_image)


@pytest.fixture
def vm_host(vm: Session) -> testinfra.host.Host:
    """A pytest-testinfra Host on this test's ``vm`` guest."""
    from vmtests.vm.testinfra_backend import host_for

    return host_for(vm)
