"""Small synthetic kernel files: an ELF with chosen sections, a bzImage header, a module.

Real kernels are tens of megabytes and need a download; these carry exactly the bytes the
readers look at (setup header fields, ELF section table, notes, .modinfo, the banner)."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path


def elf(sections: dict[str, tuple[int, bytes]]) -> bytes:
    """A 64-bit little-endian ELF holding ``name -> (sh_type, data)`` sections."""
    names = ["", *sections, ".shstrtab"]
    strtab = b"\0".join(n.encode() for n in names) + b"\0"
    offsets = {n: strtab.index(b"\0" + n.encode() + b"\0") + 1 for n in names[1:]}
    body = bytearray(b"\0" * 64)
    placed = []
    for name, (sh_type, data) in sections.items():
        placed.append((offsets[name], sh_type, len(body), len(data)))
        body += data
    placed.append((offsets[".shstrtab"], 3, len(body), len(strtab)))
    body += strtab
    shoff = len(body)
    body += b"\0" * 64  # the null section
    for name_off, sh_type, off, size in placed:
        body += struct.pack("<IIQQQQIIQQ", name_off, sh_type, 0, 0, off, size, 0, 0, 1, 0)
    head = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    head += struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, len(placed) + 1, len(placed)
    )
    body[:64] = head
    return bytes(body)


def pvh_note() -> bytes:
    desc = struct.pack("<I", 0x1000000)
    return struct.pack("<III", 4, len(desc), 18) + b"Xen\0" + desc


def vmlinux(release: str, *, pvh: bool = True) -> bytes:
    sections = {".rodata": (1, f"\0Linux version {release} (me@here) #1 SMP\0".encode())}
    if pvh:
        sections[".notes"] = (7, pvh_note())
    return elf(sections)


def bzimage(release: str, payload: bytes = b"") -> bytes:
    """A bzImage whose setup header names ``release`` and whose payload is ``payload``."""
    setup_sects = 1
    data = bytearray(b"\0" * ((setup_sects + 1) * 512))
    data[0x1F1] = setup_sects
    data[0x1FE:0x200] = b"\x55\xaa"
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x206, 0x20F)
    version = f"{release} (me@here) #1 SMP\0".encode()
    data[0x300 : 0x300 + len(version)] = version
    struct.pack_into("<H", data, 0x20E, 0x100)  # the string is at 0x200 + 0x100
    struct.pack_into("<II", data, 0x248, 0, len(payload))
    return bytes(data) + payload


def module(release: str, *, xz: bool = False) -> bytes:
    info = f"license=GPL\0vermagic={release} SMP mod_unload \0depends=\0".encode()
    data = elf({".modinfo": (1, info)})
    return lzma.compress(data) if xz else data


def modules_tree(base: Path, release: str, names: list[str], builtin: list[str] = ()) -> Path:  # type: ignore[assignment]
    """A modules_install tree: BASE/lib/modules/RELEASE with a module file per name."""
    moddir = base / "lib/modules" / release
    for name in names:
        path = moddir / "kernel" / f"{name.replace('_', '-')}.ko.xz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(module(release, xz=True))
    moddir.mkdir(parents=True, exist_ok=True)
    (moddir / "modules.builtin").write_text("".join(f"kernel/x/{b}.ko\n" for b in builtin))
    return moddir
