"""ZFS for a kernel layer: ``zfs.ko`` built from Debian's ``zfs-dkms`` against that kernel's own
headers, at image-build time, and cached in the layer's folder (NOTES §6: 221 s measured).

Only what needs ZFS asks for it (a ``zfs`` scenario, the zfs VM tests, the hostile and fault
runs of zfs), so a run without ZFS never builds it. Folder ``kernel-<key>/zfs-<zkey>/``::

    modules.squashfs   the layer's modules tree plus updates/dkms/{spl,zfs}.ko, depmod'ed by the
                       userland's kmod: a ZFS boot's modules disk, in place of the layer's own
    manifest.json      the headers package, the zfs-dkms version, the build's seconds

The compiler, dkms and the headers live only in a throwaway chroot (mmdebstrap, format
``null``): the .ko files are copied out of it and it is deleted, so none of it reaches the
booted image. ``zfs-dkms`` comes from the userland's suite, so the module is the version of the
userland's ``zfsutils-linux``; the headers from the kernel's own suite. The key is the layer's
key, the userland's suite and :data:`ZFS_VERSION`: a hit needs no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from vmtests.vm import cache
from vmtests.vm.errors import ImageError
from vmtests.vm.kernel import debian, spec
from vmtests.vm.kernel.layer import Depmod, Layer, squash_modules

ZFS_VERSION = "1"  # bump when the build changes what it produces
DKMS_PACKAGE = "zfs-dkms"
COMPONENTS = ("main", "contrib")  # zfs-dkms is in contrib


def key(layer: Layer, suite: str) -> str:
    h = hashlib.sha256(f"zfs-version {ZFS_VERSION}\nlayer {layer.key}\nsuite {suite}\n".encode())
    return h.hexdigest()[:16]


def folder(layer: Layer, suite: str) -> Path:
    return layer.root / f"zfs-{key(layer, suite)}"


def headers_package(layer: Layer) -> str:
    """``linux-headers-RELEASE`` of a Debian layer; a user's kernel has no package to ask for."""
    made_by = spec.parse(layer.spec) if layer.spec.startswith("debian:") else None
    if not isinstance(made_by, spec.DebianKernel):
        raise ImageError(
            f"ZFS needs a Debian kernel (its headers package builds zfs.ko); {layer.spec} is "
            "a kernel of your own: run ZFS rows with --kernel debian:SUITE"
        )
    return f"linux-headers-{layer.release}"


def kernel_suite(layer: Layer) -> str:
    made_by = spec.parse(layer.spec)
    assert isinstance(made_by, spec.DebianKernel)
    return made_by.suite


def mmdebstrap_argv(
    suite: str, kernel_suite: str, headers: str, release: str, out: Path, euid: int
) -> list[str]:
    """A throwaway chroot that installs the headers and zfs-dkms (whose postinst builds the
    module for every kernel whose headers are there), makes sure of the build for ``release``
    (``dkms autoinstall`` is idempotent), and copies out only ``updates/`` of that kernel."""
    m = debian.mirrors()
    sources = debian.sources(suite, m, components=COMPONENTS)
    if kernel_suite != suite:
        sources += [s for s in debian.sources(kernel_suite, m) if s not in sources]
    mode = "root" if euid == 0 else "unshare"
    return [
        "mmdebstrap",
        "--variant=apt",
        f"--mode={mode}",
        "--format=null",
        "--quiet",
        f"--include={headers},{DKMS_PACKAGE}",
        f'--customize-hook=chroot "$1" dkms autoinstall -k {release}',
        f"--customize-hook=copy-out /lib/modules/{release}/updates {out}",
        f"--customize-hook=download /var/lib/dpkg/status {out}/dpkg-status",
        suite,
        "/dev/null",
        *sources,
    ]


def dkms_version(dpkg_status: str) -> str:
    """zfs-dkms's version, from the chroot's dpkg status."""
    for stanza in dpkg_status.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line)
        if lines.get("Package") == DKMS_PACKAGE:
            return lines.get("Version", "?")
    return "?"


def _build(layer: Layer, suite: str, work: Path, depmod: Depmod, say: cache.Say) -> None:
    t0 = time.monotonic()
    headers, release = headers_package(layer), layer.release
    scratch = work / "scratch"
    out = scratch / "out"
    out.mkdir(parents=True)
    argv = mmdebstrap_argv(suite, kernel_suite(layer), headers, release, out, os.geteuid())
    say(f"building zfs.ko for {release}: {headers} and {DKMS_PACKAGE} from {suite} (dkms)")
    cache.run(argv, say)
    built = sorted(out.rglob("*.ko*"))
    names = sorted(p.name.split(".ko")[0] for p in built)
    if "zfs" not in names:
        raise ImageError(f"dkms built no zfs.ko for {release} (found: {names or 'nothing'})")
    tree = scratch / "root" / "lib/modules" / release
    tree.parent.mkdir(parents=True)
    cache.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(layer.modules_squashfs)], say)
    for ko in built:
        dest = tree / "updates/dkms" / ko.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ko, dest)
    depmod(scratch / "root", release)
    squash_modules(tree, work / "modules.squashfs", say)
    version = dkms_version((out / "dpkg-status").read_text())
    seconds = round(time.monotonic() - t0)
    manifest = {"headers": headers, "zfs_dkms": version, "modules": names, "build_s": seconds}
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(scratch)
    say(f"zfs {version} for {release} built in {seconds} s")


def ensure(layer: Layer, suite: str, depmod: Depmod, say: cache.Say) -> Path:
    """The ZFS modules disk for ``layer``, built first on a miss (under the cache's lock)."""
    final = folder(layer, suite)
    disk = final / "modules.squashfs"
    with cache.locked(cache.cache_dir() / ".lock"):
        if disk.exists():
            return disk
        with cache.entry(final) as work:
            try:
                _build(layer, suite, work, depmod, say)
            except (OSError, subprocess.SubprocessError) as exc:
                raise ImageError(f"zfs module: {type(exc).__name__}: {exc}") from exc
    return disk


__all__ = ["ZFS_VERSION", "dkms_version", "ensure", "folder", "headers_package", "key"]
