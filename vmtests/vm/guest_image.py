"""The image a boot uses: the cached userland plus the chosen kernel's layer, proven to boot.

Commands and fixtures call ``prepare`` with the spec they were given. It builds what the cache
lacks (the userland once; a layer per kernel, without touching the userland) and, the first
time a layer is used, boots it once under TCG to settle how: the PVH ELF if that runs a
command, else the bzImage. Measured: bookworm-backports' 6.12.95 PVH ELF panics early in
varying places while its bzImage boots; trixie's 6.12.118 and bookworm's 6.1 boot through PVH.
A kernel that boots neither way is refused with its console tail.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

from vmtests.vm import image
from vmtests.vm.cache import Say
from vmtests.vm.errors import KernelError, VmError
from vmtests.vm.kernel import layer as layer_mod
from vmtests.vm.kernel import spec as spec_mod
from vmtests.vm.qemu import Accel

PROBE_TIMEOUT_S = 120.0  # a TCG boot under load; a panic ends QEMU long before


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def spec_for(text: str | None, modules: Path | None = None) -> spec_mod.KernelSpec:
    """The spec a command boots (option, else $VMTEST_KERNEL, else the recipe's suite)."""
    return spec_mod.chosen(text, modules=modules, default_suite=image.suite())


def prepare(
    spec: spec_mod.KernelSpec | str | None = None,
    *,
    modules: Path | None = None,
    build_userland: bool = True,
    say: Say | None = None,
) -> image.Image:
    """The bootable image for ``spec``; refusals (KernelError) come before any boot."""
    say = say or _stderr
    if not isinstance(spec, spec_mod.DebianKernel | spec_mod.UserKernel):
        spec = spec_for(spec, modules)
    if build_userland:
        userland, built = image.build(say=say)
    else:
        userland, built = image.find_userland(), False
    wanted = image.read_list(image.RECIPE_DIR / "initramfs-modules.txt")
    said: list[str] = [] if built else [f"userland {userland.name} is cached: reused"]

    def layer_say(msg: str) -> None:
        """Says the userland's reuse when a layer is built (and only then: a cache hit is quiet,
        so ``vmtest exec``'s stderr is the command's own)."""
        while said:
            say(said.pop())
        say(msg)

    layer, _ = layer_mod.ensure(spec, wanted, image.depmod_with(userland), layer_say)
    img = image.Image(userland, layer)
    if not layer.probed:
        _probe(img, say)
    return img


def with_zfs(img: image.Image, say: Say | None = None) -> image.Image:
    """``img`` with ZFS: its layer's modules disk plus zfs.ko, built on the first ask for this
    layer (vm/kernel/zfs.py) and cached with it. Asked for only by what runs ZFS."""
    from vmtests.vm.kernel import zfs

    if img.modules is not None:
        return img
    disk = zfs.ensure(img.layer, image.suite(), image.depmod_with(img.root), say or _stderr)
    return dataclasses.replace(img, modules=disk)


def _boots(img: image.Image) -> tuple[bool, str]:
    from vmtests.vm import execute

    with tempfile.TemporaryDirectory(prefix="vmtest-kernel-probe-") as tmp:
        try:
            r = execute.run_quietly(
                img, ["true"], Path(tmp), accel=Accel.TCG, timeout=PROBE_TIMEOUT_S, cold_boot=True
            )
        except VmError as exc:
            return False, exc.console_tail or exc.message
    return r.returncode == 0, ""


def _probe(img: image.Image, say: Say) -> None:
    """Boot once through PVH; on failure once through the bzImage; record what worked."""
    lay = img.layer
    pvh_file = lay.root / "vmlinux"
    if pvh_file.exists():
        say(f"  probe boot of {lay.release} through PVH")
        ok, tail = _boots(img)
        if ok:
            lay.record_probe(True)
            return
        say(f"  {lay.release} failed to boot through PVH: trying its bzImage")
        if not (lay.root / "vmlinuz").exists():
            raise KernelError(f"{lay.release} does not boot (PVH ELF, no bzImage):\n{tail}")
        lay.record_probe(False)  # Layer.kernel is now the bzImage
    ok, tail = _boots(img)
    if not ok:
        (lay.root / "boot.json").unlink(missing_ok=True)  # probe again next time
        raise KernelError(f"{lay.release} does not boot here:\n{tail[-2000:]}")
    lay.record_probe(False)


__all__ = ["prepare", "spec_for", "with_zfs"]
