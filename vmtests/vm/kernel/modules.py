"""A kernel's modules tree (``lib/modules/RELEASE``): what it holds and whether it fits.

A modules tree from another build loads nothing, and a kernel that lacks dm-snapshot boots
fine and then fails the first snapshot: both are refused here, in one line, before any boot.
A needed module may be built in instead (``modules.builtin``): 6.12 builds virtio_console and
virtio_pci in, which 6.1 ships as modules.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from vmtests.vm.errors import KernelError
from vmtests.vm.kernel.files import MODULE_SUFFIXES, module_name, module_release

# What the harness cannot boot or test without, as kmod names. dm-snapshot.ko carries the
# snapshot, snapshot-origin and snapshot-merge targets alike (6.1 and 6.12), so 'merge' needs
# no name of its own.
NEEDED = (
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "squashfs",
    "overlay",
    "dm_mod",
    "dm_snapshot",
    "loop",
)

# The same needs as .config symbols, checked when a user's tree has a .config; the values say
# why. SQUASHFS_LZ4: the guest root is an lz4 squashfs; BINFMT_SCRIPT: the init is a script.
NEEDED_CONFIG = {
    "CONFIG_BLK_DEV_DM": "device-mapper",
    "CONFIG_DM_SNAPSHOT": "dm-snapshot and its merge",
    "CONFIG_BLK_DEV_LOOP": "loop",
    "CONFIG_VIRTIO_MMIO": "virtio-mmio",
    "CONFIG_VIRTIO_BLK": "virtio-blk",
    "CONFIG_VIRTIO_CONSOLE": "virtio-console",
    "CONFIG_SQUASHFS": "squashfs",
    "CONFIG_SQUASHFS_LZ4": "lz4 squashfs",
    "CONFIG_OVERLAY_FS": "overlayfs",
    "CONFIG_TMPFS": "tmpfs",
    "CONFIG_BINFMT_SCRIPT": "#! scripts",
    "CONFIG_BLK_DEV_INITRD": "initramfs",
    "CONFIG_DEVTMPFS": "devtmpfs",
    "CONFIG_SERIAL_8250_CONSOLE": "ttyS0 console",
}


def builtin(moddir: Path) -> set[str]:
    """Modules built into the kernel: ``modules.builtin`` lists ``kernel/.../x.ko``."""
    f = moddir / "modules.builtin"
    if not f.exists():
        return set()
    return {module_name(line.strip()) for line in f.read_text().splitlines() if line.strip()}


def loadable(moddir: Path) -> dict[str, Path]:
    """Every module file in the tree, by kmod name."""
    return {
        module_name(p.name): p
        for p in sorted(moddir.rglob("*.ko*"))
        if p.name.endswith(MODULE_SUFFIXES) and p.is_file()
    }


def check(release: str, moddir: Path, needed: tuple[str, ...] = NEEDED) -> None:
    """Refuse a tree of another kernel (by its folder name and by a module's vermagic, which
    catches a renamed tree) and one lacking a needed module, naming every one that is missing."""
    if moddir.name != release:
        raise KernelError(
            f"{moddir} holds modules for {moddir.name}, not for {release}: run "
            "'make modules_install INSTALL_MOD_PATH=DIR' for this kernel and pass --modules DIR"
        )
    have = loadable(moddir)
    sample = next((have[n] for n in ("dm_mod", "loop", "virtio_blk") if n in have), None)
    sample = sample or next(iter(have.values()), None)
    if sample is not None:
        built_for = module_release(sample)
        if built_for != release:
            raise KernelError(
                f"{sample.name} was built for {built_for}, the kernel is {release}: "
                "the modules tree is from another build"
            )
    inside = builtin(moddir)
    missing = [n for n in needed if n not in have and n not in inside]
    if missing:
        raise KernelError(
            f"{release} has neither built in nor as a module: {', '.join(missing)} "
            "(the harness needs them: enable them in .config)"
        )


def config_symbols(text: str) -> dict[str, str]:
    """CONFIG_X -> value, from a .config or /boot/config-RELEASE."""
    return dict(
        line.split("=", 1)
        for line in text.splitlines()
        if line.startswith("CONFIG_") and "=" in line
    )


def missing_from_config(text: str) -> list[str]:
    """The needed symbols a .config leaves unset, as ``CONFIG_X (what)``."""
    symbols = config_symbols(text)
    return [f"{k} ({why})" for k, why in NEEDED_CONFIG.items() if symbols.get(k) not in ("y", "m")]


def load_order(modules_dep: str, wanted: list[str], builtins: set[str]) -> list[str]:
    """The files to insmod, dependencies first, as modules.dep names them; a wanted name that
    is built in is skipped, one that is neither is an error that names it."""
    deps: dict[str, list[str]] = {}
    for line in modules_dep.splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {module_name(posixpath.basename(m)): m for m in deps}
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for dep in reversed(deps[mod]):
            visit(dep)
        order.append(mod)

    for name in wanted:
        key = name.replace("-", "_")
        if key in by_name:
            visit(by_name[key])
        elif key not in builtins:
            raise KernelError(f"module {name} is neither built in nor a module of this kernel")
    return order


__all__ = [
    "NEEDED",
    "NEEDED_CONFIG",
    "builtin",
    "check",
    "config_symbols",
    "load_order",
    "loadable",
    "missing_from_config",
]
