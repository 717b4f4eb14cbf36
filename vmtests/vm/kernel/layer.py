"""A kernel layer: everything of one kernel a boot needs, cached apart from the userland.

Folder ``kernel-<key>`` in the image cache::

    vmlinuz            the bzImage, if any (booted when PVH is not proven to work)
    vmlinux            the PVH-bootable ELF, when there is one
    release            the ``uname -r``, read by results and ids with no boot
    modules.cpio       initramfs part: the modules the init insmods (decompressed) + load-order
    modules.squashfs   lib/modules/RELEASE with depmod's indexes: a read-only disk the init
                       mounts over /lib/modules/RELEASE, so modprobe works in the guest
    manifest.json      what made it (spec, package, release, sha256, initramfs modules)
    boot.json          written after the probe boot: whether PVH works ({"pvh": bool})

The key is a hash of what made the layer: for ``debian:`` the canonical spec (the package is
resolved only on a miss, so a hit needs no network), for a user's kernel the bytes of its
kernel file and modules tree; both with the initramfs module list and ``LAYER_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmtests.vm import cache, cpio
from vmtests.vm.errors import ImageError, KernelError
from vmtests.vm.kernel import debian, files, modules, usertree
from vmtests.vm.kernel.spec import DebianKernel, KernelSpec, UserKernel

LAYER_VERSION = "1"
MODULES_SERIAL = "vmtest-modules"
Depmod = Callable[[Path, str], None]  # depmod -b STAGING RELEASE


@dataclass(frozen=True)
class Layer:
    root: Path

    @property
    def release(self) -> str:
        return (self.root / "release").read_text().strip()

    @property
    def spec(self) -> str:
        """The spec that made this layer, canonical (``debian:trixie/cloud-amd64``, a path)."""
        return str(json.loads((self.root / "manifest.json").read_text())["spec"])

    @property
    def modules_cpio(self) -> Path:
        return self.root / "modules.cpio"

    @property
    def modules_squashfs(self) -> Path:
        return self.root / "modules.squashfs"

    @property
    def probed(self) -> bool:
        return (self.root / "boot.json").exists()

    @property
    def kernel(self) -> Path:
        """The PVH ELF when it exists and the probe did not reject it, else the bzImage."""
        elf, bz = self.root / "vmlinux", self.root / "vmlinuz"
        if not elf.exists() or not bz.exists():
            return elf if elf.exists() else bz
        if self.probed and not json.loads((self.root / "boot.json").read_text())["pvh"]:
            return bz
        return elf

    @property
    def key(self) -> str:
        return self.root.name.removeprefix("kernel-")

    def record_probe(self, pvh: bool) -> None:
        tmp = self.root / f"boot.json.{os.getpid()}"
        tmp.write_text(json.dumps({"pvh": pvh}) + "\n")
        tmp.replace(self.root / "boot.json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def tree_hash(folder: Path) -> str:
    """Every file of a tree by relative path and content; the build/source links are left out
    (modules_install points them into the build tree, which is not the modules)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if rel.split("/")[0] in ("build", "source") or not p.is_file():
            continue
        h.update(rel.encode() + b"\0" + _sha256(p).encode() + b"\n")
    return h.hexdigest()


def key(spec: KernelSpec, wanted: list[str], resolved: usertree.Resolved | None = None) -> str:
    """The layer's cache key: what made it, and nothing of where it came from."""
    h = hashlib.sha256(f"layer-version {LAYER_VERSION}\n".encode())
    h.update(("initramfs " + " ".join(wanted) + "\n").encode())
    if isinstance(spec, DebianKernel):
        h.update(f"debian {spec}\n".encode())
    else:
        assert resolved is not None
        for f in (resolved.bzimage, resolved.vmlinux):
            h.update(f"file {_sha256(f) if f else '-'}\n".encode())
        h.update(f"modules {tree_hash(resolved.moddir) if resolved.moddir else '-'}\n".encode())
    return h.hexdigest()[:16]


def modules_cpio(moddir: Path, wanted: list[str]) -> tuple[bytes, list[str]]:
    """The initramfs part: each module to insmod, decompressed, and the order to load them."""
    order = modules.load_order(
        (moddir / "modules.dep").read_text(), wanted, modules.builtin(moddir)
    )
    names = [files.module_name(rel) for rel in order]
    entries = [cpio.Entry.directory("lib"), cpio.Entry.directory("lib/modules")]
    entries += [
        cpio.Entry.file(f"lib/modules/{n}.ko", files.read_module(moddir / rel))
        for n, rel in zip(names, order, strict=True)
    ]
    load_order = "".join(n + "\n" for n in names).encode()
    entries.append(cpio.Entry.file("lib/modules/load-order", load_order))
    return cpio.archive(entries, mtime=cache.SOURCE_DATE_EPOCH), names


def squash_modules(moddir: Path, out: Path, say: cache.Say) -> None:
    """A modules tree as the read-only disk the init mounts over /lib/modules/RELEASE."""
    cache.run(
        [
            "mksquashfs",
            str(moddir),
            str(out),
            "-comp",
            "lz4",
            "-all-root",
            "-noappend",
            "-quiet",
            "-no-progress",
            "-mkfs-time",
            str(cache.SOURCE_DATE_EPOCH),
            "-all-time",
            str(cache.SOURCE_DATE_EPOCH),
        ],
        say,
        epoch=False,  # -all-time, not a clamp: a user's modules have their build's mtimes
    )


def _finish(
    work: Path,
    staging: Path,
    release: str,
    bz: Path | None,
    elf: Path | None,
    wanted: list[str],
    depmod: Depmod,
    say: cache.Say,
) -> list[str]:
    """The common tail of both builds: kernel files, depmod, both modules parts, release."""
    if bz is not None:
        shutil.copyfile(bz, work / "vmlinuz")
    if elf is not None:
        shutil.copyfile(elf, work / "vmlinux")
    elif bz is not None:
        try:  # best effort: without lz4/zstd, or without PVH, the bzImage boots (~0.4 s slower)
            vmlinux = files.decompress_payload(files.BzImage.read(bz).payload)
        except KernelError as exc:
            say(f"  {exc}: booting the bzImage")
        else:
            if files.has_pvh_note(vmlinux):
                (work / "vmlinux").write_bytes(vmlinux)
            else:
                say("  the kernel has no PVH entry: booting the bzImage")
    depmod(staging, release)
    moddir = staging / "lib/modules" / release
    data, names = modules_cpio(moddir, wanted)
    (work / "modules.cpio").write_bytes(data)
    squash_modules(moddir, work / "modules.squashfs", say)
    (work / "release").write_text(release + "\n")
    return names


def _write_manifest(work: Path, **fields: object) -> None:
    (work / "manifest.json").write_text(json.dumps(fields, indent=1, sort_keys=True) + "\n")


def build_debian(
    spec: DebianKernel, work: Path, wanted: list[str], depmod: Depmod, say: cache.Say
) -> None:
    """Fetch ``spec``'s kernel package and build its layer into ``work``."""
    m = debian.mirrors()
    say(f"  fetching {spec.package} from {spec.suite} ({m.main}, from the {m.source})")
    state = cache.cache_dir() / f"apt-{spec.suite}"
    with cache.locked(cache.cache_dir() / f".apt-{spec.suite}.lock"):
        deb, package = debian.fetch(spec.suite, spec.package, m, state, work / "scratch")
    staging = work / "scratch" / "root"
    release = debian.unpack_kernel(deb, staging)
    bz = staging / "boot" / f"vmlinuz-{release}"
    if files.BzImage.read(bz).release != release:
        raise KernelError(f"{deb.name}: its vmlinuz and its modules disagree on the release")
    names = _finish(work, staging, release, bz, None, wanted, depmod, say)
    shutil.copyfile(staging / "boot" / f"config-{release}", work / "config")
    _write_manifest(
        work,
        spec=str(spec),
        package=package,
        deb=deb.name,
        sha256=_sha256(deb),
        release=release,
        initramfs_modules=names,
        mirror=m.main,
    )
    shutil.rmtree(work / "scratch")


def build_user(
    spec: UserKernel,
    resolved: usertree.Resolved,
    work: Path,
    wanted: list[str],
    depmod: Depmod,
    say: cache.Say,
) -> None:
    """A user's kernel as a layer: their modules copied and depmod'ed afresh (their indexes
    may be stale or absent, and belong to their host's kmod)."""
    staging = work / "scratch"
    target = staging / "lib/modules" / resolved.release
    if resolved.moddir is not None:
        ignore = shutil.ignore_patterns("build", "source")
        shutil.copytree(resolved.moddir, target, symlinks=True, ignore=ignore)
    else:
        target.mkdir(parents=True)
    names = _finish(
        work, staging, resolved.release, resolved.bzimage, resolved.vmlinux, wanted, depmod, say
    )
    if resolved.config is not None:
        (work / "config").write_text(resolved.config)
    _write_manifest(
        work,
        spec=str(spec),
        release=resolved.release,
        initramfs_modules=names,
        kernel=str(resolved.bzimage or resolved.vmlinux),
    )
    shutil.rmtree(staging)


def ensure(
    spec: KernelSpec, wanted: list[str], depmod: Depmod, say: cache.Say, *, force: bool = False
) -> tuple[Layer, bool]:
    """The cached layer for ``spec``, built first on a miss; the flag says it was built."""
    scratch = cache.cache_dir() / f".user-{os.getpid()}"
    resolved = None
    try:
        if isinstance(spec, UserKernel):
            resolved = usertree.resolve(spec, scratch)  # refusals come here, before any build
        layer = Layer(cache.cache_dir() / f"kernel-{key(spec, wanted, resolved)}")
        with cache.locked(cache.cache_dir() / ".lock"):
            if layer.modules_squashfs.exists() and not force:
                return layer, False
            t0 = time.monotonic()
            say(f"building kernel layer {layer.key} for {spec}")
            with cache.entry(layer.root) as work:
                try:
                    if resolved is None:
                        assert isinstance(spec, DebianKernel)
                        build_debian(spec, work, wanted, depmod, say)
                    else:
                        assert isinstance(spec, UserKernel)
                        build_user(spec, resolved, work, wanted, depmod, say)
                except (OSError, subprocess.SubprocessError) as exc:
                    raise ImageError(f"kernel layer: {type(exc).__name__}: {exc}") from exc
            say(f"kernel layer {layer.key} built in {time.monotonic() - t0:.0f} s: {layer.release}")
            return layer, True
    finally:
        cache.remove(scratch)


__all__ = [
    "LAYER_VERSION",
    "MODULES_SERIAL",
    "Layer",
    "ensure",
    "key",
    "modules_cpio",
    "squash_modules",
    "tree_hash",
]
