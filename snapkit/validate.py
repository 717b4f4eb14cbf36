"""Safety rules for the names, sizes and chunk sizes a user hands to snapkit.

Everything a user types ends up in a device-mapper table line, a ``/dev/mapper`` path or an LVM
command, so each rule here refuses input that could inject into one of those, and each refusal
is one line that says what is wrong and how to fix it.

Sources for the limits:

* the kernel (``drivers/md/dm-ioctl.c``): a dm name is at most ``DM_NAME_LEN - 1`` = 127 bytes
  and may not contain ``/``; newer kernels also refuse ``.``, ``..`` and ``control``;
* lvm2 (``lib/misc/lvm-string.c``, ``_validate_name`` and ``apply_lvname_restrictions``): names
  use only ``A-Za-z0-9+_.-``, may not start with ``-``, may not be ``.`` or ``..``, are at most
  127 characters; LV names may not start with ``snapshot`` or ``pvmove`` nor contain LVM's
  sub-volume suffixes. We apply LVM's character set to every name, dm or LVM: it is stricter
  than the kernel's, so a name we accept is safe in a table, a path and an LVM argv alike.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from snapkit.errors import ValidationError

SECTOR = 512
DM_NAME_MAX = 127
CHUNK_MIN_SECTORS = 8
CHUNK_MAX_SECTORS = 1024

_NAME_CHARS = re.compile(r"[A-Za-z0-9+_.\-]+")
_RESERVED_DM = frozenset({".", "..", "control"})
_LV_RESERVED_PREFIXES = ("snapshot", "pvmove")
_LV_RESERVED_PARTS = (
    "_cdata",
    "_cmeta",
    "_corig",
    "_cpool",
    "_cvol",
    "_imeta",
    "_iorig",
    "_mimage",
    "_mlog",
    "_pmspare",
    "_rimage",
    "_rmeta",
    "_tdata",
    "_tmeta",
    "_vdata",
    "_vorigin",
    "_wcorig",
)

_UNITS = {
    "s": SECTOR,
    "b": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "p": 1 << 50,
}
_SIZE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[kKmMgGtTpP](?:i?[bB])?|[sSbB])")


def dm_name(name: str, *, what: str = "device name") -> str:
    """Return ``name`` if it is safe as a dm device name, a path component and an LVM argument."""
    if not name:
        raise ValidationError(f"the {what} is empty", hint="give a name such as 'data-snap'")
    if not name.isascii() or not _NAME_CHARS.fullmatch(name):
        bad = next(c for c in name if not _NAME_CHARS.fullmatch(c))
        raise ValidationError(
            f"the {what} {name!r} contains {bad!r}",
            hint="use only letters, digits and + _ . -",
        )
    if name.startswith("-"):
        raise ValidationError(
            f"the {what} {name!r} starts with '-'",
            hint="LVM splits VG-LV at a hyphen; start with a letter or digit",
        )
    if name in _RESERVED_DM:
        raise ValidationError(f"the {what} {name!r} is reserved", hint="choose another name")
    if len(name) > DM_NAME_MAX:
        raise ValidationError(
            f"the {what} is {len(name)} characters long",
            hint=f"device-mapper names are at most {DM_NAME_MAX}; shorten it",
        )
    return name


def lv_name(name: str) -> str:
    """Return ``name`` if LVM would accept it for a new logical volume."""
    dm_name(name, what="LV name")
    for prefix in _LV_RESERVED_PREFIXES:
        if name.startswith(prefix):
            raise ValidationError(
                f"LV names starting {prefix!r} are reserved by LVM", hint="choose another name"
            )
    for part in _LV_RESERVED_PARTS:
        if part in name:
            raise ValidationError(
                f"LV names containing {part!r} are reserved by LVM", hint="choose another name"
            )
    return name


def vg_name(name: str) -> str:
    """Return ``name`` if LVM would accept it as a volume group name."""
    return dm_name(name, what="VG name")


def table_token(token: str, *, what: str) -> str:
    """Return ``token`` if it can stand as one word of a dm table line.

    A device path or target argument with whitespace or a control character would split or end
    the line and let one value inject a second target or argument.
    """
    if not token:
        raise ValidationError(f"the {what} is empty", hint="give a device path or MAJ:MIN")
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise ValidationError(
            f"the {what} {token!r} contains whitespace, a control or non-ASCII character",
            hint="give a plain path such as /dev/loop0, or MAJ:MIN",
        )
    return token


def format_size(size: int) -> str:
    """Bytes as :func:`parse_size` reads them back, never more than ``size``: whole units
    where they divide, else rounded down in a unit small enough to be close (1.9G: 1945M),
    so that a limit quoted in a hint is one a user can give as it is."""
    for unit, scale in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale and (size % scale == 0 or size >= 16 * scale):
            return f"{size // scale}{unit}"
    return f"{size}b"


def parse_size(text: str) -> int:
    """Parse a size such as ``64M``, ``1.5G``, ``4KiB`` or ``2048s`` into bytes.

    Units are binary (K = 1024), upper or lower case, as LVM reads ``-L``; ``s`` is a 512-byte
    sector. A bare number is refused: LVM reads it as MiB and dmsetup as sectors, so guessing
    would be wrong for one of them.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValidationError(
            f"cannot read {text!r} as a size", hint="write a number and a unit: 64M, 1G, 2048s"
        )
    try:
        value = Decimal(match["num"]) * _UNITS[match["unit"][0].lower()]
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
        raise ValidationError(f"cannot read {text!r} as a size") from exc
    if value != value.to_integral_value():
        raise ValidationError(
            f"{text!r} is not a whole number of bytes", hint="use a smaller unit, e.g. 1536M"
        )
    if value <= 0:
        raise ValidationError(f"the size {text!r} is zero", hint="give a positive size")
    return int(value)


def parse_sectors(text: str) -> int:
    """Parse a size like :func:`parse_size` and return it in 512-byte sectors."""
    size = parse_size(text)
    if size % SECTOR:
        raise ValidationError(
            f"{text!r} is not a whole number of 512-byte sectors",
            hint="round it to a multiple of 512 bytes",
        )
    return size // SECTOR


def chunk_sectors(sectors: int) -> int:
    """Return ``sectors`` if it is a chunk size both the kernel and LVM accept (8-1024, 2^n)."""
    if sectors < CHUNK_MIN_SECTORS or sectors > CHUNK_MAX_SECTORS or sectors & (sectors - 1):
        raise ValidationError(
            f"chunk size {sectors} sectors ({sectors * SECTOR} bytes) is not allowed",
            hint="use a power of two from 4K to 512K (8 to 1024 sectors)",
        )
    return sectors


def parse_chunk(text: str) -> int:
    """Parse a chunk size such as ``4K`` or ``16s`` and return it in sectors."""
    return chunk_sectors(parse_sectors(text))


# OpenZFS (module/zcommon/zfs_namecheck.c): a component is letters, digits and ``_ - : .``
# (and space, which we refuse: it splits argv in every hint we print); a pool name starts with
# a letter. Stricter than ZFS, so a dataset we accept cannot be read as an option or a second
# argument by zfs, zpool or mount.
_ZFS_COMPONENT = re.compile(r"[A-Za-z0-9_.:\-]+")
ZFS_NAME_MAX = 255  # ZFS_MAX_DATASET_NAME_LEN - 1, for the whole DATASET@SNAPSHOT


def zfs_dataset(name: str) -> str:
    """Return ``name`` if it is a plain ZFS filesystem name (``pool/a/b``): no ``@`` or ``#``
    (a snapshot or bookmark), no option-like or empty component, and within ZFS's length."""
    parts = name.split("/")
    bad = next((p for p in parts if not p.isascii() or not _ZFS_COMPONENT.fullmatch(p)), None)
    if not name or bad is not None:
        raise ValidationError(
            f"{name!r} is not a ZFS dataset name snapkit accepts",
            hint="use pool/dataset names of letters, digits and _ - : . only",
        )
    if not parts[0][0].isalpha() or any(p.startswith("-") or p in (".", "..") for p in parts):
        raise ValidationError(
            f"{name!r} is not a ZFS dataset name snapkit accepts",
            hint="a pool name starts with a letter; no component starts with '-' or is . or ..",
        )
    if len(name) > ZFS_NAME_MAX:
        raise ValidationError(f"the dataset name {name[:40]}... is too long for ZFS")
    return name


def zfs_snapshot_name(dataset: str, name: str) -> str:
    """``DATASET@NAME`` when ``name`` is a dm-safe snapshot name that ZFS also takes (dm names
    allow ``+``, ZFS names do not) and the whole stays within ZFS's length."""
    dm_name(name, what="snapshot name")
    if "+" in name:
        raise ValidationError(
            f"the snapshot name {name!r} contains '+', which ZFS refuses",
            hint="use only letters, digits and _ . -",
        )
    full = f"{zfs_dataset(dataset)}@{name}"
    if len(full) > ZFS_NAME_MAX:
        raise ValidationError(
            f"{full[:40]}... is longer than ZFS's {ZFS_NAME_MAX} characters",
            hint="choose a shorter snapshot name",
        )
    return full


__all__ = [
    "CHUNK_MAX_SECTORS",
    "CHUNK_MIN_SECTORS",
    "DM_NAME_MAX",
    "SECTOR",
    "chunk_sectors",
    "dm_name",
    "format_size",
    "lv_name",
    "parse_chunk",
    "parse_sectors",
    "parse_size",
    "table_token",
    "vg_name",
    "zfs_dataset",
    "zfs_snapshot_name",
]
