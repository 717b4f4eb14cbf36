"""A kernel the user built: find what to boot and its modules, refuse what cannot work.

A contributor who changed dm-snapshot points ``--kernel`` at their build: the tree itself
(``arch/x86/boot/bzImage``, ``vmlinux``, ``.config``, ``include/config/kernel.release``, the
``.ko`` files beside their sources), one of its kernel files, or any bzImage/vmlinux, with
``--modules DIR`` for a ``make modules_install INSTALL_MOD_PATH=DIR`` tree. Every refusal is
one line naming the fix, and happens before any boot: a wrong module loads nothing, and a
missing one shows up as a hang or a failed snapshot minutes later.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from vmtests.vm.errors import KernelError
from vmtests.vm.kernel import files, modules
from vmtests.vm.kernel.spec import UserKernel


@dataclass(frozen=True)
class Resolved:
    bzimage: Path | None
    vmlinux: Path | None  # a PVH-capable ELF of the same release, when there is one
    release: str
    moddir: Path | None  # lib/modules/RELEASE, or None when everything is built in
    config: str | None


def _tree_of(path: Path) -> Path | None:
    """The build tree a kernel file sits in: DIR for DIR/vmlinux or DIR/arch/x86/boot/bzImage."""
    if path.is_dir():
        return path
    if path.parent.name == "boot" and len(path.parents) > 3 and path.parents[2].name == "arch":
        return path.parents[3]
    return path.parent if path.name == "vmlinux" else None


def _kernel_files(path: Path, tree: Path | None) -> tuple[Path | None, Path | None]:
    if path.is_dir():
        bz, elf = path / "arch/x86/boot/bzImage", path / "vmlinux"
        if not bz.exists() and not elf.exists():
            raise KernelError(f"{path}: neither arch/x86/boot/bzImage nor vmlinux: run 'make'")
        return (bz if bz.exists() else None), (elf if elf.exists() else None)
    if files.is_elf(path):
        beside = tree / "arch/x86/boot/bzImage" if tree else None
        return (beside if beside and beside.exists() else None), path
    files.BzImage.read(path)  # refuses what is not a kernel
    beside = tree / "vmlinux" if tree else None
    return path, (beside if beside and beside.exists() else None)


def find_moddir(base: Path, release: str) -> Path:
    """DIR/lib/modules/RELEASE (or usr/lib/..., or DIR itself when it is that folder)."""
    for p in (base / "lib/modules" / release, base / "usr/lib/modules" / release, base):
        if p.name == release and p.is_dir():
            return p
    found = sorted(
        p.name
        for sub in (base / "lib/modules", base / "usr/lib/modules")
        if sub.is_dir()
        for p in sub.iterdir()
    )
    raise KernelError(
        f"{base} holds modules for {', '.join(found) or 'no kernel'}, not for {release}: "
        f"run 'make modules_install INSTALL_MOD_PATH={base}' for this kernel"
    )


def stage_tree_modules(tree: Path, release: str, dest: Path) -> Path:
    """Lay a build tree's ``.ko`` files out as modules_install would, without running make."""
    moddir = dest / "lib/modules" / release
    order = []
    for line in (tree / "modules.order").read_text().splitlines():
        rel = line.strip().removeprefix("kernel/")
        if not rel:
            continue
        ko = rel[:-2] + ".ko" if rel.endswith(".o") else rel  # 6.2+ lists .o, older trees .ko
        if not (tree / ko).exists():
            raise KernelError(f"{tree}: modules.order names {ko}, which is not built: run 'make'")
        (moddir / "kernel" / ko).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tree / ko, moddir / "kernel" / ko)
        order.append(f"kernel/{ko}\n")
    (moddir / "modules.order").write_text("".join(order))
    for name in ("modules.builtin", "modules.builtin.modinfo"):
        if (tree / name).exists():
            shutil.copyfile(tree / name, moddir / name)
    return moddir


def resolve(spec: UserKernel, staging: Path) -> Resolved:
    """What to boot and with which modules; ``staging`` receives in-tree modules laid out."""
    tree = _tree_of(spec.path)
    bz, elf = _kernel_files(spec.path, tree)
    release = files.BzImage.read(bz).release if bz else None
    if elf is not None:
        data = elf.read_bytes()
        elf_release = files.vmlinux_release(data)
        if release is not None and elf_release != release:
            elf = None  # a stale vmlinux beside a newer bzImage: boot the bzImage
        elif not files.has_pvh_note(data):
            if bz is None:
                raise KernelError(
                    f"{spec.path}: this vmlinux has no PVH entry (CONFIG_PVH=n): "
                    "pass arch/x86/boot/bzImage instead"
                )
            elf = None
        release = release or elf_release
    assert release is not None
    stamp = tree / "include/config/kernel.release" if tree else None
    if stamp and stamp.exists() and stamp.read_text().strip() != release:
        raise KernelError(
            f"{tree}: the tree is configured for {stamp.read_text().strip()} but its kernel is "
            f"{release}: run 'make' again"
        )
    config = (tree / ".config").read_text() if tree and (tree / ".config").exists() else None
    if config is not None and (lacking := modules.missing_from_config(config)):
        raise KernelError(f"{release} lacks what the harness needs: {', '.join(lacking)}")
    moddir = None
    if spec.modules is not None:
        moddir = find_moddir(spec.modules, release)
    elif tree and (tree / "modules.order").exists():
        moddir = stage_tree_modules(tree, release, staging)
    if moddir is not None:
        modules.check(release, moddir)
    elif config is None or any(
        modules.config_symbols(config).get(k) == "m" for k in modules.NEEDED_CONFIG
    ):
        raise KernelError(
            f"{release}: no modules tree found: pass --modules DIR "
            "(a 'make modules_install INSTALL_MOD_PATH=DIR' tree)"
        )
    return Resolved(bz, elf, release, moddir, config)


__all__ = ["Resolved", "find_moddir", "resolve", "stage_tree_modules"]
