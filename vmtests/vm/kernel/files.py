"""Kernel and module files read without root or kernel tools.

A user hands us a bzImage or a vmlinux and we must know its release before any boot (to match
its modules and to name results), and whether QEMU can boot it through PVH (an ELF with the Xen
PHYS32_ENTRY note: no real-mode set-up and no in-guest decompression, about 0.4 s of every TCG
boot). Both are in the files: the bzImage setup header (Documentation/arch/x86/boot.rst) and the
ELF's notes and ``linux_banner``. Payloads come in several compressions (6.1 cloud: lz4,
6.1 generic: xz, 6.12: zstd); Python 3.11 has no zstd or lz4, so those go through the tools.
"""

from __future__ import annotations

import gzip
import lzma
import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vmtests.vm.errors import KernelError


@dataclass(frozen=True)
class BzImage:
    """The parts of a bzImage's setup header this harness needs."""

    data: bytes

    @classmethod
    def read(cls, path: Path) -> BzImage:
        data = path.read_bytes()
        if len(data) < 0x250 or data[0x202:0x206] != b"HdrS" or data[0x1FE:0x200] != b"\x55\xaa":
            raise KernelError(f"{path}: not a kernel (neither a bzImage nor an ELF vmlinux)")
        return cls(data)

    @property
    def release(self) -> str:
        """The ``uname -r``: the first word of the string ``kernel_version`` (0x20E) points to.

        The field is an offset from 0x200 to a NUL-terminated string in the setup code."""
        off = struct.unpack_from("<H", self.data, 0x20E)[0]
        if off == 0:
            raise KernelError("the bzImage carries no version string (kernel_version is 0)")
        raw = self.data[0x200 + off : 0x200 + off + 256].split(b"\0", 1)[0]
        return raw.decode("ascii", "replace").split(" ", 1)[0]

    @property
    def payload(self) -> bytes:
        """The compressed vmlinux: payload_offset/length (protocol 2.08+), counted from the
        protected-mode code at (setup_sects + 1) * 512, so no magic scan is needed."""
        protocol = struct.unpack_from("<H", self.data, 0x206)[0]
        if protocol < 0x208:
            raise KernelError(f"boot protocol {protocol:#x} is too old to locate the payload")
        setup_sects = self.data[0x1F1] or 4
        off, length = struct.unpack_from("<II", self.data, 0x248)
        start = (setup_sects + 1) * 512 + off
        return self.data[start : start + length]


_MAGIC = (
    ("gzip", b"\x1f\x8b"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("lz4", b"\x02\x21\x4c\x18"),  # the legacy frame the kernel's build writes
    ("lzma", b"\x5d\x00\x00"),
)


def compression(data: bytes) -> str:
    return next((name for name, magic in _MAGIC if data.startswith(magic)), "unknown")


def decompress_payload(payload: bytes) -> bytes:
    """The vmlinux ELF inside a bzImage payload."""
    kind = compression(payload)
    if kind == "gzip":
        # the kernel appends its size after the gzip member: decompress the member only
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    if kind in ("xz", "lzma"):
        fmt = lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE
        return lzma.LZMADecompressor(format=fmt).decompress(payload)
    tool = {"zstd": ["zstd", "-dcq"], "lz4": ["lz4", "-dc"]}.get(kind)
    if tool is None:
        raise KernelError(f"the bzImage payload is {kind}: cannot extract the vmlinux")
    if shutil.which(tool[0]) is None:
        raise KernelError(f"the bzImage payload is {kind}: install {tool[0]} to extract it")
    data = payload[:-4] if kind == "zstd" else payload  # zstd refuses the trailing size word
    proc = subprocess.run(tool, input=data, capture_output=True, check=False)
    # lz4 complains about the size word after its frame, but its output is whole: judge the ELF
    if not proc.stdout.startswith(b"\x7fELF"):
        raise KernelError(f"{tool[0]} -d failed: {proc.stderr.decode(errors='replace')[-200:]}")
    return proc.stdout


# -- ELF ---------------------------------------------------------------------------------------

SHT_NOTE = 7
XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point QEMU's -kernel looks for


def elf_sections(elf: bytes) -> dict[str, tuple[int, int, int]]:
    """Section name -> (type, file offset, size) of a 64-bit little-endian ELF."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise KernelError("not a 64-bit little-endian ELF")
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    heads = [struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    str_off, str_size = heads[shstrndx][4], heads[shstrndx][5]
    strtab = elf[str_off : str_off + str_size]
    out = {}
    for name_off, sh_type, _flags, _addr, off, size in heads:
        name = strtab[name_off : strtab.index(b"\0", name_off)].decode()
        out[name] = (sh_type, off, size)
    return out


def _notes(blob: bytes) -> Iterator[tuple[bytes, int]]:
    i = 0
    while i + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from("<III", blob, i)
        yield blob[i + 12 : i + 12 + namesz].rstrip(b"\0"), ntype
        i += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)


def has_pvh_note(elf: bytes) -> bool:
    """Whether QEMU can boot this ELF through PVH (CONFIG_PVH=y), read from its notes."""
    for sh_type, off, size in elf_sections(elf).values():
        if sh_type == SHT_NOTE and (b"Xen", XEN_ELFNOTE_PHYS32_ENTRY) in _notes(
            elf[off : off + size]
        ):
            return True
    return False


_BANNER = re.compile(rb"Linux version (\S+) \(")


def vmlinux_release(elf: bytes) -> str:
    """The ``uname -r`` of a vmlinux: ``linux_banner`` in .rodata (System.map may be a stub)."""
    rodata = elf_sections(elf).get(".rodata")
    m = _BANNER.search(elf, rodata[1], rodata[1] + rodata[2]) if rodata else _BANNER.search(elf)
    if m is None:
        raise KernelError("no 'Linux version' banner in the vmlinux")
    return m.group(1).decode()


def is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def kernel_release(path: Path) -> str:
    """The release of a bzImage or a vmlinux, told apart by content."""
    return vmlinux_release(path.read_bytes()) if is_elf(path) else BzImage.read(path).release


# -- modules -----------------------------------------------------------------------------------

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path: str) -> str:
    """``kernel/drivers/md/dm-snapshot.ko.xz`` -> ``dm_snapshot``, kmod's normalised name."""
    base = path.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)].replace("-", "_")
    raise KernelError(f"{path}: not a module file")


def read_module(path: Path) -> bytes:
    """The module's ELF, decompressed: busybox insmod in the initramfs has no zstd at all, and
    decompressing once at layer build is cheaper than at every TCG boot."""
    data = path.read_bytes()
    kind = compression(data)
    if kind == "xz":
        return lzma.decompress(data)
    if kind == "gzip":
        return gzip.decompress(data)
    if kind == "zstd":
        proc = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=False)
        if proc.returncode != 0:
            raise KernelError(f"{path}: zstd -d failed (install zstd)")
        return proc.stdout
    return data


def modinfo(elf: bytes) -> dict[str, list[str]]:
    """A module's .modinfo: key -> values (vermagic, depends, alias, ...)."""
    section = elf_sections(elf).get(".modinfo")
    if section is None:
        raise KernelError("the module has no .modinfo section")
    out: dict[str, list[str]] = {}
    for item in elf[section[1] : section[1] + section[2]].split(b"\0"):
        key, eq, value = item.decode("utf-8", "replace").partition("=")
        if eq:
            out.setdefault(key, []).append(value)
    return out


def module_release(path: Path) -> str:
    """The release a module was built for: the first word of its vermagic."""
    return modinfo(read_module(path)).get("vermagic", [""])[0].split(" ", 1)[0]


__all__ = [
    "BzImage",
    "compression",
    "decompress_payload",
    "has_pvh_note",
    "is_elf",
    "kernel_release",
    "modinfo",
    "module_name",
    "module_release",
    "read_module",
    "vmlinux_release",
]
