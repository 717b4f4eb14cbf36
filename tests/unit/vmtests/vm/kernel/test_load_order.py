"""The initramfs's insmod order, from modules.dep: dependencies first, built-ins skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmtests.vm.errors import KernelError
from vmtests.vm.kernel import modules

MODULES_DEP = """\
kernel/drivers/md/dm-mod.ko:
kernel/drivers/md/dm-bufio.ko:
kernel/drivers/md/persistent-data/dm-persistent-data.ko: kernel/drivers/md/dm-bufio.ko
kernel/drivers/md/dm-snapshot.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-thin-pool.ko: kernel/drivers/md/persistent-data/dm-persistent-data.ko \
kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/drivers/block/loop.ko:
kernel/drivers/virtio/virtio_mmio.ko:
"""


@pytest.fixture
def modules_dep() -> str:
    # modules.dep has no line continuations; the backslash above only keeps the source short.
    return MODULES_DEP.replace("\\\n", "")


def names(paths: list[str]) -> list[str]:
    return [Path(p).name.removesuffix(".ko") for p in paths]


def test_dependencies_come_first_and_each_module_once(modules_dep: str) -> None:
    order = names(modules.load_order(modules_dep, ["dm_snapshot", "dm_thin_pool", "loop"], set()))
    assert order == [
        "dm-mod",
        "dm-bufio",
        "dm-snapshot",
        "dm-persistent-data",
        "dm-thin-pool",
        "loop",
    ]
    for mod, deps in [("dm-thin-pool", ["dm-persistent-data", "dm-bufio", "dm-mod"])]:
        assert all(order.index(d) < order.index(mod) for d in deps)


def test_dashes_and_underscores_name_the_same_module(modules_dep: str) -> None:
    assert names(modules.load_order(modules_dep, ["dm-mod", "virtio-mmio"], set())) == [
        "dm-mod",
        "virtio_mmio",
    ]


def test_paths_are_as_modules_dep_names_them(modules_dep: str) -> None:
    assert modules.load_order(modules_dep, ["loop"], set()) == ["kernel/drivers/block/loop.ko"]


def test_unknown_module_is_an_error_that_names_it(modules_dep: str) -> None:
    with pytest.raises(KernelError, match="ext4 is neither built in nor a module"):
        modules.load_order(modules_dep, ["loop", "ext4"], set())


def test_a_built_in_module_is_skipped_not_refused(modules_dep: str) -> None:
    # 6.12 builds virtio_console in; 6.1 ships it as a module: both must boot
    order = modules.load_order(modules_dep, ["virtio_console", "loop"], {"virtio_console"})
    assert order == ["kernel/drivers/block/loop.ko"]
