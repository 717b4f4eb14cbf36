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
import posixpath
import pwd
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from vmtests.vm import cpio
from vmtests.vm.errors import ImageError

RECIPE_VERSION = "3"  # 3: squashfs by sqfstar from the tar (any user builds it, root-owned)
RECIPE_DIR = Path(__file__).resolve().parents[2] / "images"
SOURCE_DATE_EPOCH = 1700000000  # fixed timestamps make the artefacts reproducible

Say = Callable[[str], None]


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
        raise ImageError(
            f"no guest image for recipe {image.recipe_hash}: run 'vmtest image build'",
            recipe=image.recipe_hash,
        )
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
    """Return the image, building it first if the cache has none. The flag says if it was built.

    Every failure is an ImageError: the builder's own files are plain files of the caller, so
    the temporary folder is always removed, and if even that fails the message says which."""
    say = say or (lambda msg: print(msg, file=sys.stderr))
    final = cache_dir() / recipe_hash(recipe)
    image = Image(final)
    with _locked(cache_dir() / ".lock"):
        if image.rootfs.exists() and not force:
            return image, False
        check_host(HostFacts.current())
        work = final.with_name(final.name + f".tmp-{os.getpid()}")
        _remove(work)
        work.mkdir(parents=True)
        try:
            _build_into(work, recipe, say)
            if final.exists():
                shutil.rmtree(final)
            work.rename(final)
        except (OSError, tarfile.TarError, subprocess.SubprocessError) as exc:
            raise ImageError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            _remove(work)
    return image, True


def _remove(folder: Path) -> None:
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ImageError(f"cannot remove {folder} ({exc.strerror}): remove it by hand") from exc


# -- the host: what an unprivileged build needs --------------------------------------------------

SUBIDS_NEEDED = 65536  # mmdebstrap's unshare mode maps a full 16-bit id range into the guest
# Not lz4: without it the build still works, it boots the bzImage (see _extract_vmlinux).
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


def _run(argv: list[str], say: Say, **kwargs: object) -> None:
    _show(argv, say)
    proc = subprocess.run(argv, env=_env(), capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise ImageError(_failed(argv[0], proc.returncode, proc.stderr or proc.stdout))


def _show(argv: list[str], say: Say) -> None:
    say("  $ " + " ".join(argv[:6]) + (" ..." if len(argv) > 6 else ""))


def _env() -> dict[str, str]:
    """The build's environment: fixed timestamps, and no .pyc written as a side effect of an import.

    Maintainer scripts import Python modules (py3compile imports debpython) and may cache them
    as timestamp .pyc files before py3compile writes its own (hash-based under
    SOURCE_DATE_EPOCH); which one wins differed between root and unshare mode."""
    return {
        **os.environ,
        "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH),
        "LC_ALL": "C",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _failed(tool: str, code: int, output: str) -> str:
    tail = "\n".join(output.strip().splitlines()[-15:])
    return f"{tool} failed (exit {code}):\n{tail}"


def _suite() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    return "bookworm"


def _build_into(work: Path, recipe: Path, say: Say) -> None:
    """Build in ``work``: mmdebstrap writes a tar, and everything is read from that tar.

    A tar, not a directory, because its owners are data: as a normal user mmdebstrap's unshare
    mode writes root-owned members, where a directory would be owned by subordinate uids that
    the user can neither read nor delete. Intermediates live in ``scratch``, removed at the end."""
    t0 = time.monotonic()
    packages = _read_list(recipe / "packages.txt")
    scratch = work / "scratch"
    scratch.mkdir()
    root_tar = scratch / "root.tar"
    say(f"building guest image {work.name.split('.')[0]} from {len(packages)} Debian packages")
    # No mirror argument: mmdebstrap then uses this machine's own apt sources.
    _run(
        [
            "mmdebstrap",
            "--variant=essential",
            f"--mode={mmdebstrap_mode(os.geteuid())}",
            "--format=tar",
            "--quiet",
            "--include=" + ",".join(packages),
            *(f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES),
            _suite(),
            str(root_tar),
        ],
        say,
    )
    say(f"  root tar ready in {time.monotonic() - t0:.0f} s")
    with tarfile.open(root_tar) as tar:
        root = RootTar(tar)
        (work / "manifest.txt").write_text(manifest(root.read("var/lib/dpkg/status").decode()))
        kver = root.kernel_version()
        (work / "vmlinuz").write_bytes(root.read(f"boot/vmlinuz-{kver}"))
        _extract_vmlinux(work / "vmlinuz", work / "vmlinux", say)
        (work / "initramfs.cpio").write_bytes(_initramfs(root, kver, recipe, scratch))
        _squashfs(root, work / "root.squashfs", scratch, say)
    shutil.rmtree(scratch)
    say(f"guest image built in {time.monotonic() - t0:.0f} s: kernel {kver}")


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

    def kernel_version(self) -> str:
        versions = self.listdir("lib/modules")
        if len(versions) != 1:
            raise ImageError(f"expected one kernel in the guest, found {versions}")
        return versions[0]

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
    _show(argv, say)
    log = scratch / "sqfstar.log"
    with log.open("w") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=err, stderr=err, env=_env())
        assert proc.stdin is not None
        try:
            with proc.stdin:
                root.copy_members(in_squashfs, proc.stdin)
        except BrokenPipeError:
            pass  # sqfstar stopped reading: its exit status and log say why
        finally:
            code = proc.wait()
    if code != 0:
        raise ImageError(_failed("sqfstar", code, log.read_text()))


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


def module_load_order(modules_dep: str, wanted: list[str]) -> list[str]:
    """The .ko files to insmod, dependencies first, as modules.dep names them (relative paths)."""
    deps: dict[str, list[str]] = {}
    for line in modules_dep.splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {posixpath.basename(m).removesuffix(".ko").replace("-", "_"): m for m in deps}
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
    return order


def _initramfs(root: RootTar, kver: str, recipe: Path, scratch: Path) -> bytes:
    """The boot initramfs: static busybox, its applet links and the modules the root needs."""
    modules_dir = f"lib/modules/{kver}"
    modules = module_load_order(
        root.read(f"{modules_dir}/modules.dep").decode(),
        _read_list(recipe / "initramfs-modules.txt"),
    )
    names = [posixpath.basename(m) for m in modules]
    order = "".join(n.removesuffix(".ko") + "\n" for n in names)
    busybox = scratch / "busybox"
    busybox.write_bytes(root.read("bin/busybox"))
    busybox.chmod(0o755)
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
    entries = [cpio.Entry.directory(d) for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules")]
    entries.append(cpio.Entry.file("bin/busybox", busybox.read_bytes(), 0o755))
    entries += [
        cpio.Entry.symlink(f"bin/{a}", "busybox") for a in applets.stdout.split() if a != "busybox"
    ]
    entries += [
        cpio.Entry.file(f"lib/modules/{n}", root.read(f"{modules_dir}/{m}"))
        for n, m in zip(names, modules, strict=True)
    ]
    entries.append(cpio.Entry.file("lib/modules/load-order", order.encode()))
    return cpio.archive(entries, mtime=SOURCE_DATE_EPOCH)


__all__ = [
    "HostFacts",
    "Image",
    "RootTar",
    "build",
    "cache_dir",
    "check_host",
    "find",
    "in_squashfs",
    "manifest",
    "module_load_order",
    "recipe_hash",
]
