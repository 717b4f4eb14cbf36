"""Build and cache the guest image: a kernel, a small busybox initramfs and a squashfs root.

The image is keyed by a content hash of the recipe files that shape it (``HASHED_FILES`` in
``images/``) plus ``RECIPE_VERSION`` (bumped when this builder changes what it produces). The init
script and the guest environment are not part of the image: they travel in the per-boot archive
with the working tree, so editing them needs no rebuild. It is cached under
``$SNAPKIT_IMAGE_CACHE`` or the XDG cache directory. A cached image is complete by construction:
a build happens in a temporary folder that is renamed into place only at the end, under a
lock, so parallel test workers and interrupted builds never see half an image.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vmtests import cpio

RECIPE_VERSION = "2"  # 2: the uncompressed vmlinux rides along for a PVH boot
RECIPE_DIR = Path(__file__).resolve().parent.parent / "images"
SOURCE_DATE_EPOCH = 1700000000  # fixed timestamps make the artefacts reproducible

Say = Callable[[str], None]


class ImageError(Exception):
    """The image could not be built or is not there; the message says what to do."""


@dataclass(frozen=True)
class Image:
    """A built guest image. Paths are inside the cache; nothing here is ever modified."""

    root: Path

    @property
    def kernel(self) -> Path:
        """The uncompressed ELF kernel when the build extracted one, else the bzImage.

        QEMU boots an ELF kernel through its PVH entry point: no firmware real-mode set-up and
        no in-guest decompression, which saves about 0.4 s of every TCG boot."""
        elf = self.root / "vmlinux"
        return elf if elf.exists() else self.root / "vmlinuz"

    @property
    def initramfs(self) -> Path:
        return self.root / "initramfs.cpio"

    @property
    def rootfs(self) -> Path:
        return self.root / "root.squashfs"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.txt"

    @property
    def recipe_hash(self) -> str:
        return self.root.name


def cache_dir() -> Path:
    explicit = os.environ.get("SNAPKIT_IMAGE_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "snapkit" / "images"


HASHED_FILES = ("packages.txt", "initramfs-modules.txt")


def recipe_hash(recipe: Path = RECIPE_DIR) -> str:
    """Hash the recipe files that shape the image, by name and content."""
    h = hashlib.sha256(f"recipe-version {RECIPE_VERSION}\n".encode())
    for name in HASHED_FILES:
        h.update(name.encode() + b"\0" + (recipe / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _read_list(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def find(recipe: Path = RECIPE_DIR) -> Image:
    """The cached image for the current recipe, or an error that says how to build it."""
    image = Image(cache_dir() / recipe_hash(recipe))
    if not image.rootfs.exists():
        raise ImageError(f"no guest image for recipe {image.recipe_hash}: run 'vmtest image build'")
    return image


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def build(
    *, force: bool = False, say: Say | None = None, recipe: Path = RECIPE_DIR
) -> tuple[Image, bool]:
    """Return the image, building it first if the cache has none. The flag says if it was built."""
    say = say or (lambda msg: print(msg, file=sys.stderr))
    final = cache_dir() / recipe_hash(recipe)
    image = Image(final)
    with _locked(cache_dir() / ".lock"):
        if image.rootfs.exists() and not force:
            return image, False
        work = final.with_name(final.name + f".tmp-{os.getpid()}")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            _build_into(work, recipe, say)
            if final.exists():
                shutil.rmtree(final)
            work.rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return image, True


def _run(argv: list[str], say: Say, **kwargs: object) -> None:
    say("  $ " + " ".join(argv[:6]) + (" ..." if len(argv) > 6 else ""))
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH), "LC_ALL": "C"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ImageError(f"{argv[0]} failed (exit {proc.returncode}):\n{tail}")


def _suite() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    return "bookworm"


def _build_into(work: Path, recipe: Path, say: Say) -> None:
    t0 = time.monotonic()
    packages = _read_list(recipe / "packages.txt")
    tree = work / "tree"
    say(f"building guest image {work.name.split('.')[0]} from {len(packages)} Debian packages")
    # No mirror argument: mmdebstrap then uses this machine's own apt sources.
    _run(
        [
            "mmdebstrap",
            "--variant=essential",
            "--format=directory",
            "--quiet",
            "--include=" + ",".join(packages),
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
            "--dpkgopt=path-exclude=/usr/lib/firmware/*",
            _suite(),
            str(tree),
        ],
        say,
    )
    say(f"  root tree ready in {time.monotonic() - t0:.0f} s")
    _write_manifest(tree, work / "manifest.txt")
    kver = _kernel_version(tree)
    shutil.copyfile(tree / "boot" / f"vmlinuz-{kver}", work / "vmlinuz")
    _extract_vmlinux(work / "vmlinuz", work / "vmlinux", say)
    (work / "initramfs.cpio").write_bytes(_initramfs(tree, kver, recipe))
    _run(
        [
            "mksquashfs",
            str(tree),
            str(work / "root.squashfs"),
            "-comp",
            "lz4",
            "-noappend",
            "-quiet",
            "-no-progress",
            "-wildcards",
            "-e",
            "boot",
            "usr/lib/firmware",
        ],
        say,
    )
    shutil.rmtree(tree)
    say(f"guest image built in {time.monotonic() - t0:.0f} s: kernel {kver}")


_LZ4_LEGACY_MAGIC = bytes.fromhex("02214c18")
_XEN_PVH_NOTE = b"Xen\0"


def _extract_vmlinux(bzimage: Path, out: Path, say: Say) -> None:
    """Unpack the ELF kernel from an LZ4 bzImage, as the kernel's scripts/extract-vmlinux does.

    Best effort: if the payload is not LZ4, ``lz4`` is missing, or the result is not an ELF with
    a Xen/PVH note, the bzImage is used and the boot is only slower."""
    data = bzimage.read_bytes()
    start = data.find(_LZ4_LEGACY_MAGIC)
    if start < 0 or shutil.which("lz4") is None:
        say("  no LZ4 payload or no lz4 tool: booting the bzImage")
        return
    proc = subprocess.run(["lz4", "-dc"], input=data[start:], capture_output=True, check=False)
    elf = proc.stdout  # lz4 complains about the bytes after the frame; the output is whole
    if elf[:4] != b"\x7fELF" or _XEN_PVH_NOTE not in elf[: 1 << 26]:
        say("  the extracted kernel is not a PVH-capable ELF: booting the bzImage")
        return
    out.write_bytes(elf)


def _write_manifest(tree: Path, out: Path) -> None:
    proc = subprocess.run(
        ["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W", "-f=${Package}\t${Version}\n"],
        capture_output=True,
        text=True,
        check=True,
    )
    out.write_text("".join(sorted(proc.stdout.splitlines(keepends=True))))


def _kernel_version(tree: Path) -> str:
    versions = sorted(p.name for p in (tree / "lib" / "modules").iterdir())
    if len(versions) != 1:
        raise ImageError(f"expected one kernel in the guest, found {versions}")
    return versions[0]


def module_load_order(modules_dir: Path, wanted: list[str]) -> list[Path]:
    """The .ko files to insmod, dependencies first, from the kernel's modules.dep."""
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {Path(m).name.removesuffix(".ko").replace("-", "_"): m for m in deps}
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for dep in reversed(deps[mod]):
            visit(dep)
        order.append(mod)

    for name in wanted:
        key = name.replace("-", "_")
        if key not in by_name:
            raise ImageError(f"module {name} is not in this kernel (built in, or misspelt?)")
        visit(by_name[key])
    return [modules_dir / m for m in order]


def _initramfs(tree: Path, kver: str, recipe: Path) -> bytes:
    modules = module_load_order(
        tree / "lib/modules" / kver, _read_list(recipe / "initramfs-modules.txt")
    )
    order = "".join(m.name.removesuffix(".ko") + "\n" for m in modules)
    busybox = tree / "bin" / "busybox"
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
    entries = [cpio.Entry.directory(d) for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules")]
    entries.append(cpio.Entry.file("bin/busybox", busybox.read_bytes(), 0o755))
    entries += [
        cpio.Entry.symlink(f"bin/{a}", "busybox") for a in applets.stdout.split() if a != "busybox"
    ]
    entries += [cpio.Entry.file(f"lib/modules/{m.name}", m.read_bytes()) for m in modules]
    entries.append(cpio.Entry.file("lib/modules/load-order", order.encode()))
    return cpio.archive(entries, mtime=SOURCE_DATE_EPOCH)


__all__ = ["Image", "ImageError", "build", "cache_dir", "find", "module_load_order", "recipe_hash"]
