"""Build and cache the guest's userland: a squashfs root, a busybox initramfs part, depmod.

One userland serves every kernel: a boot is this userland plus a kernel layer
(``vmtests.vm.kernel.layer``), so adding a kernel never rebuilds it. It is keyed by a content
hash of the recipe files that shape it (``HASHED_FILES`` in ``vmtests/images/``: the packages
and the Debian suite) plus ``RECIPE_VERSION`` (bumped when this builder changes what it
produces). The mirror is not in the key: it is where the packages come from, not what they are.
The init script and the guest environment travel in the per-boot archive, so editing them needs
no rebuild. The userland holds:

    root.squashfs   the root, no kernel in it (each kernel brings its modules on a disk)
    busybox.cpio    the initramfs's static busybox and its applet links
    manifest.txt    'package TAB version' of every installed package
    tools/          the root's own kmod as depmod, with its libraries and ld.so: every layer's
                    module indexes are written by the kmod that reads them in the guest, on any
                    host, with nothing of the host's (which may have no kmod at all)
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import pwd
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from vmtests.vm import cache, cpio
from vmtests.vm.cache import SOURCE_DATE_EPOCH, Say, cache_dir
from vmtests.vm.errors import ImageError
from vmtests.vm.kernel import debian
from vmtests.vm.kernel.layer import Layer

# 4: no kernel in the userland (kernel layers), the suite and mirror from the recipe, tools/
# 5: contrib too (zfsutils-linux); a build with a compiler in it is refused
RECIPE_VERSION = "5"
# The archive components the userland takes packages from: contrib holds zfsutils-linux.
COMPONENTS = ("main", "contrib")
# What must never be in the booted root: a compiler and kernel headers are build tools (the
# ZFS module is built apart, per kernel: vm/kernel/zfs.py). A package pulled in by a
# dependency (zfsutils-linux *recommends* zfs-dkms) fails the build rather than ship.
BUILD_ONLY = ("gcc", "cpp", "make", "dkms", "zfs-dkms", "binutils")
# gcc-12 and cpp-12 are compilers; gcc-12-base (libgcc's) is in every Debian root
BUILD_ONLY_PATTERN = re.compile(r"(gcc|cpp)-\d+|linux-headers-.*")
# Package data (pyproject.toml), so an installed harness builds the same image as a checkout.
RECIPE_DIR = Path(__file__).resolve().parents[1] / "images"


@dataclass(frozen=True)
class Image:
    """A bootable guest: the userland ``root`` and a kernel ``layer``, both in the cache and
    never modified (except the layer's one-time probe verdict). ``modules``: a modules disk in
    place of the layer's, for a guest that needs more modules than the kernel ships (ZFS's,
    built per layer: ``guest_image.with_zfs``)."""

    root: Path
    layer: Layer
    modules: Path | None = None

    @property
    def kernel(self) -> Path:
        return self.layer.kernel

    def initramfs_bytes(self) -> bytes:
        """The base initramfs: busybox, then the layer's modules (concatenated archives)."""
        return (self.root / "busybox.cpio").read_bytes() + self.layer.modules_cpio.read_bytes()

    @property
    def rootfs(self) -> Path:
        return self.root / "root.squashfs"

    @property
    def modules_disk(self) -> Path:
        return self.modules or self.layer.modules_squashfs

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.txt"

    @property
    def recipe_hash(self) -> str:
        """The userland's key."""
        return self.root.name

    @property
    def key(self) -> str:
        """The whole guest's key: userland and kernel layer (and its extra modules)."""
        extra = f"+{self.modules.parent.name}" if self.modules else ""
        return f"{self.recipe_hash}+{self.layer.key}{extra}"

    @property
    def release(self) -> str:
        """The kernel's ``uname -r``, known without a boot."""
        return self.layer.release


HASHED_FILES = ("packages.txt", "debian-suite.txt")


def recipe_hash(recipe: Path = RECIPE_DIR) -> str:
    """Hash the recipe files that shape the userland, by name and content."""
    h = hashlib.sha256(f"recipe-version {RECIPE_VERSION}\n".encode())
    for name in HASHED_FILES:
        h.update(name.encode() + b"\0" + (recipe / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def read_list(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def suite(recipe: Path = RECIPE_DIR) -> str:
    """The recipe's Debian suite: the userland's, and the default kernel's."""
    names = read_list(recipe / "debian-suite.txt")
    if len(names) != 1:
        raise ImageError(f"{recipe / 'debian-suite.txt'} must name one Debian suite")
    return names[0]


def find_userland(recipe: Path = RECIPE_DIR) -> Path:
    """The cached userland for the current recipe, or an error that says how to build it."""
    root = cache_dir() / recipe_hash(recipe)
    if not (root / "root.squashfs").exists():
        raise ImageError(
            f"no guest image for recipe {root.name}: run 'vmtest image build'", recipe=root.name
        )
    return root


def build(
    *, force: bool = False, say: Say | None = None, recipe: Path = RECIPE_DIR
) -> tuple[Path, bool]:
    """Return the userland, building it first if the cache has none. The flag says if it was built.

    Every failure is an ImageError: the builder's own files are plain files of the caller, so
    the temporary folder is always removed, and if even that fails the message says which."""
    say = say or (lambda msg: print(msg, file=sys.stderr))
    final = cache_dir() / recipe_hash(recipe)
    with cache.locked(cache_dir() / ".lock"):
        if (final / "root.squashfs").exists() and not force:
            return final, False
        check_host(HostFacts.current())
        try:
            with cache.entry(final) as work:
                _build_into(work, recipe, say)
        except (OSError, tarfile.TarError, subprocess.SubprocessError) as exc:
            raise ImageError(f"{type(exc).__name__}: {exc}") from exc
    return final, True


def depmod_with(userland: Path) -> Callable[[Path, str], None]:
    """``depmod -b STAGING RELEASE`` by the userland's own kmod, through its own ld.so."""
    tools = userland / "tools"

    def depmod(staging: Path, release: str) -> None:
        if (tools / "depmod").exists():
            argv = [
                str(tools / "ld.so"),
                "--library-path",
                str(tools / "lib"),
                str(tools / "depmod"),
            ]
        elif shutil.which("depmod"):
            argv = ["depmod"]  # a userland from before tools/ existed: the host's kmod
        else:
            raise ImageError("no depmod: rebuild the image ('vmtest image build --force')")
        cache.run([*argv, "-b", str(staging), release], lambda _m: None)

    return depmod


# -- the host: what an unprivileged build needs --------------------------------------------------

SUBIDS_NEEDED = 65536  # mmdebstrap's unshare mode maps a full 16-bit id range into the guest
# Not lz4 or zstd: without them a kernel layer keeps the bzImage (vm/kernel/layer.py).
TOOLS = {"mmdebstrap": "mmdebstrap", "sqfstar": "squashfs-tools"}
UNPRIVILEGED_TOOLS = {"newuidmap": "uidmap", "newgidmap": "uidmap", "unshare": "util-linux"}


@dataclass(frozen=True)
class HostFacts:
    """What decides whether this host can build the image, gathered once so checks stay pure."""

    euid: int
    user: str
    subuid: str  # the text of /etc/subuid ("" if absent)
    subgid: str
    missing_tools: frozenset[str]

    @classmethod
    def current(cls) -> HostFacts:
        euid = os.geteuid()
        return cls(
            euid=euid,
            user=pwd.getpwuid(euid).pw_name,
            subuid=_read_or_empty(Path("/etc/subuid")),
            subgid=_read_or_empty(Path("/etc/subgid")),
            missing_tools=frozenset(t for t in needed_tools(euid) if shutil.which(t) is None),
        )


def needed_tools(euid: int) -> dict[str, str]:
    """The tools a build runs, each with the Debian package that has it."""
    return {**TOOLS, **(UNPRIVILEGED_TOOLS if euid != 0 else {})}


def _read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _subid_ranges(table: str) -> list[tuple[str, int, int]]:
    """(owner, first id, count) per well-formed line of /etc/subuid or /etc/subgid."""
    ranges = []
    for line in table.splitlines():
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
            ranges.append((fields[0], int(fields[1]), int(fields[2])))
    return ranges


def subid_count(table: str, user: str, uid: int) -> int:
    """How many subordinate ids /etc/subuid (or subgid) grants this user, by name or by uid."""
    return sum(count for owner, _, count in _subid_ranges(table) if owner in (user, str(uid)))


def check_host(host: HostFacts) -> None:
    """Refuse up front, in one line that names the fix, what would fail minutes into a build.

    As root mmdebstrap builds in root mode; anyone else gets its unshare mode, where the guest's
    root is a subordinate uid: that needs newuidmap/newgidmap and /etc/subuid and /etc/subgid."""
    tools = needed_tools(host.euid)
    missing = sorted(host.missing_tools & tools.keys())
    if missing:
        packages = " ".join(sorted({tools[t] for t in missing}))
        raise ImageError(
            f"{', '.join(missing)} not found: run 'make setup' "
            f"(or 'sudo apt-get install {packages}')"
        )
    if host.euid == 0:
        return
    for table in ("subuid", "subgid"):
        have = subid_count(getattr(host, table), host.user, host.euid)
        if have < SUBIDS_NEEDED:
            start = free_subid_start(host.subuid + host.subgid)
            ids = f"{start}-{start + SUBIDS_NEEDED - 1}"
            raise ImageError(
                f"/etc/{table} grants {host.user} {have} ids, an unprivileged build needs "
                f"{SUBIDS_NEEDED}: run 'sudo usermod --add-subuids {ids} --add-subgids {ids} "
                f"{host.user}'"
            )


def free_subid_start(tables: str) -> int:
    """The first id above every range granted so far (and above 100000, useradd's floor), so
    the range the hint suggests overlaps no other user's."""
    return max([100000, *(first + count for _, first, count in _subid_ranges(tables))])


def mmdebstrap_mode(euid: int) -> str:
    """root as root; anyone else unshare, whose files are root-owned in the tar all the same."""
    return "root" if euid == 0 else "unshare"


# -- the build -----------------------------------------------------------------------------------


def mmdebstrap_argv(
    suite_name: str, mirrors: debian.Mirrors, packages: list[str], out: Path, euid: int
) -> list[str]:
    """mmdebstrap's command line: the suite and its sources are the recipe's, never the host's."""
    return [
        "mmdebstrap",
        "--variant=essential",
        f"--mode={mmdebstrap_mode(euid)}",
        "--format=tar",
        "--quiet",
        "--include=" + ",".join(packages),
        *(f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES),
        suite_name,
        str(out),
        *debian.sources(suite_name, mirrors, components=COMPONENTS),
    ]


def _build_into(work: Path, recipe: Path, say: Say) -> None:
    """Build in ``work``: mmdebstrap writes a tar, and everything is read from that tar.

    A tar, not a directory, because its owners are data: as a normal user mmdebstrap's unshare
    mode writes root-owned members, where a directory would be owned by subordinate uids that
    the user can neither read nor delete. Intermediates live in ``scratch``, removed at the end."""
    t0 = time.monotonic()
    packages = read_list(recipe / "packages.txt")
    scratch = work / "scratch"
    scratch.mkdir()
    root_tar = scratch / "root.tar"
    suite_name, mirrors = suite(recipe), debian.mirrors()
    say(
        f"building userland {work.name.split('.')[0]}: {len(packages)} packages from "
        f"{suite_name} ({mirrors.main}, from the {mirrors.source})"
    )
    cache.run(mmdebstrap_argv(suite_name, mirrors, packages, root_tar, os.geteuid()), say)
    say(f"  root tar ready in {time.monotonic() - t0:.0f} s")
    with tarfile.open(root_tar) as tar:
        root = RootTar(tar)
        listed = manifest(root.read("var/lib/dpkg/status").decode())
        refuse_build_tools(listed)
        (work / "manifest.txt").write_text(listed)
        (work / "busybox.cpio").write_bytes(_busybox_cpio(root, scratch))
        _depmod_tools(root, work / "tools")
        _squashfs(root, work / "root.squashfs", scratch, say)
    shutil.rmtree(scratch)
    say(f"userland built in {time.monotonic() - t0:.0f} s")


DPKG_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/locale/*",
    "/usr/share/info/*",
    "/usr/lib/firmware/*",
)
# Left out of the squashfs: the kernel and its initrd travel beside it, firmware is never loaded.
SQUASHFS_EXCLUDES = ("boot", "usr/lib/firmware")


def member_path(name: str) -> str:
    """A tar member's name as a path relative to the guest's root: './usr/' -> 'usr'."""
    return posixpath.normpath("/" + name).lstrip("/")


def in_squashfs(path: str) -> bool:
    """Whether a member (by ``member_path``) goes into the squashfs: not in an excluded tree."""
    return not any(path == x or path.startswith(x + "/") for x in SQUASHFS_EXCLUDES)


class RootTar:
    """The guest's root as mmdebstrap's tar: members read by guest path, nothing extracted.

    Paths resolve through symlinked directories as the guest would (Debian's merged /usr makes
    /bin and /lib links into /usr), so callers name files the way the guest sees them."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self._tar = tar
        self._members = {member_path(m.name): m for m in tar.getmembers()}

    def resolve(self, path: str) -> str:
        """The member path that ``path`` names once every symlink in it is followed."""
        parts = member_path(path).split("/")
        done: list[str] = []
        for _hop in range(40):
            while parts:
                here = "/".join([*done, parts[0]])
                member = self._members.get(here)
                if member is not None and member.issym():
                    base = "" if member.linkname.startswith("/") else "/".join(done)
                    parts = [
                        *member_path(posixpath.join(base, member.linkname)).split("/"),
                        *parts[1:],
                    ]
                    done = []
                    break
                done.append(parts.pop(0))
            else:
                return "/".join(done)
        raise ImageError(f"too many symlinks resolving {path} in the guest's root")

    def read(self, path: str) -> bytes:
        member = self._members.get(self.resolve(path))
        f = self._tar.extractfile(member) if member is not None and member.isfile() else None
        if f is None:
            raise ImageError(f"the guest's root has no file {path}")
        return f.read()

    def listdir(self, path: str) -> list[str]:
        """The names directly inside a directory, sorted."""
        prefix = self.resolve(path) + "/"
        return sorted(
            p[len(prefix) :]
            for p in self._members
            if p.startswith(prefix) and "/" not in p[len(prefix) :]
        )

    def copy_members(self, keep: Callable[[str], bool], out: IO[bytes]) -> None:
        """Write a tar of the kept members, each byte for byte as mmdebstrap wrote it.

        Raw copies rather than a re-encoding keep every header (pax xattrs, hard links, device
        numbers) exactly as the tar has it, so what the squashfs gets is mmdebstrap's own word."""
        src = self._tar.fileobj
        assert src is not None
        for member in self._tar.getmembers():
            if keep(member_path(member.name)):
                src.seek(member.offset)
                end = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                _copy_range(src, out, end - member.offset)
        out.write(b"\0" * (2 * tarfile.BLOCKSIZE))


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _copy_range(src: _Readable, out: IO[bytes], size: int) -> None:
    while size > 0:
        chunk = src.read(min(size, 1 << 20))
        if not chunk:
            raise ImageError("the root tar ended early")
        out.write(chunk)
        size -= len(chunk)


def manifest(dpkg_status: str) -> str:
    """'package TAB version' per installed package, sorted: what dpkg-query -W would list."""
    lines = []
    for stanza in dpkg_status.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[:1].strip()
        )
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            lines.append(f"{fields['Package']}\t{fields.get('Version', '')}\n")
    return "".join(sorted(lines))


def refuse_build_tools(listed: str) -> None:
    """Refuse a userland whose manifest lists a compiler or kernel headers (see BUILD_ONLY)."""
    names = [line.split("\t", 1)[0] for line in listed.splitlines()]
    found = [n for n in names if n in BUILD_ONLY or BUILD_ONLY_PATTERN.fullmatch(n)]
    if found:
        raise ImageError(
            f"the guest's root would hold build tools ({', '.join(found)}): a package in "
            "vmtests/images/packages.txt pulls them in; leave it out (ZFS's module is built "
            "per kernel, apart)"
        )


def sqfstar_argv(out: Path, euid: int) -> list[str]:
    """sqfstar's command line, the same image whoever runs it.

    sqfstar (4.5.1) ignores the tar's member for the root directory: it makes the root 0777 and
    owned by the uid it runs as, and ignores -root-uid/-root-gid. So -root-mode, and a normal
    user runs it as root of a user namespace of its own. No -mkfs-time: sqfstar takes that, and
    the clamp of every mtime, from SOURCE_DATE_EPOCH (and refuses both at once)."""
    argv = ["sqfstar", "-comp", "lz4", "-root-mode", "0755", "-quiet", "-no-progress", str(out)]
    return argv if euid == 0 else ["unshare", "--map-root-user", *argv]


def _squashfs(root: RootTar, out: Path, scratch: Path, say: Say) -> None:
    """The squashfs from the tar (sqfstar: owners and modes from the tar, not from the disk)."""
    argv = sqfstar_argv(out, os.geteuid())
    cache.show(argv, say)
    log = scratch / "sqfstar.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=err, stderr=err, env=cache.build_env()
        )
        assert proc.stdin is not None
        try:
            with proc.stdin:
                root.copy_members(in_squashfs, proc.stdin)
        except BrokenPipeError:
            pass  # sqfstar stopped reading: its exit status and log say why
        finally:
            code = proc.wait()
    if code != 0:
        raise ImageError(cache.failed("sqfstar", code, log.read_text()))


def _busybox_cpio(root: RootTar, scratch: Path) -> bytes:
    """The initramfs's userland part: static busybox and its applet links (no modules: those
    are the kernel layer's)."""
    busybox = scratch / "busybox"
    busybox.write_bytes(root.read("bin/busybox"))
    busybox.chmod(0o755)
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
    entries = [cpio.Entry.directory(d) for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules")]
    entries.append(cpio.Entry.file("bin/busybox", busybox.read_bytes(), 0o755))
    entries += [
        cpio.Entry.symlink(f"bin/{a}", "busybox") for a in applets.stdout.split() if a != "busybox"
    ]
    return cpio.archive(entries, mtime=SOURCE_DATE_EPOCH)


# kmod and what it links (kmod 30: libkmod, liblzma, libzstd, libcrypto, libc) plus the loader
DEPMOD_LIBS = ("libkmod.so.2", "liblzma.so.5", "libzstd.so.1", "libcrypto.so.3", "libc.so.6")
LIB_DIR = "usr/lib/x86_64-linux-gnu"


def _depmod_tools(root: RootTar, out: Path) -> None:
    """Copy the root's kmod (as ``depmod``: kmod picks its verb from its name), its libraries
    and ld.so, so every layer's indexes are written by the guest's own kmod."""
    (out / "lib").mkdir(parents=True)
    (out / "depmod").write_bytes(root.read("usr/bin/kmod"))
    (out / "ld.so").write_bytes(root.read(f"{LIB_DIR}/ld-linux-x86-64.so.2"))
    for name in DEPMOD_LIBS:
        (out / "lib" / name).write_bytes(root.read(f"{LIB_DIR}/{name}"))
    for f in (out / "depmod", out / "ld.so"):
        f.chmod(0o755)


__all__ = [
    "HostFacts",
    "Image",
    "RootTar",
    "build",
    "cache_dir",
    "check_host",
    "depmod_with",
    "find_userland",
    "in_squashfs",
    "manifest",
    "mmdebstrap_argv",
    "read_list",
    "recipe_hash",
    "refuse_build_tools",
    "suite",
]
