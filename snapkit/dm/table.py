"""Device-mapper tables as typed values, parsed from and formatted to the kernel's text form.

A table line is ``<start> <length> <type> <params>``, in 512-byte sectors. ``format`` writes
exactly what ``dmsetup table`` prints for the same table (including the space dmsetup prints
after the type when the parameters are empty, and the trailing space thin-pool emits after its
feature words), so a table read from the kernel formats back to the same bytes. Parsing accepts
any whitespace between parameters. Devices read from the kernel are ``MAJ:MIN``; when building a
table to load, a path is accepted too.

Unknown targets parse into :class:`Raw`, which keeps its parameters verbatim.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from snapkit.errors import FormatError, ValidationError
from snapkit.validate import table_token

DM_MAX_TYPE_NAME = 16  # including the NUL, from include/uapi/linux/dm-ioctl.h
_UINT = re.compile(r"0|[1-9][0-9]*")
_DEVNUM = re.compile(r"(0|[1-9][0-9]*):(0|[1-9][0-9]*)")


@dataclass(frozen=True, order=True)
class DevNum:
    """A block device number as a dm table shows it: ``MAJ:MIN``."""

    major: int
    minor: int

    def __post_init__(self) -> None:
        if not (0 <= self.major < 1 << 12 and 0 <= self.minor < 1 << 20):
            raise ValidationError(f"device number {self.major}:{self.minor} is out of range")

    def __str__(self) -> str:
        return f"{self.major}:{self.minor}"


Dev = DevNum | str
"""A device in a table: a number read from the kernel, or a path written for loading."""


def parse_dev(token: str) -> Dev:
    match = _DEVNUM.fullmatch(token)
    if match:
        return DevNum(int(match[1]), int(match[2]))
    return _path(token)


def _path(dev: str) -> str:
    return table_token(dev, what="device")


def _check_dev(dev: Dev) -> None:
    if isinstance(dev, str):
        _path(dev)


def _uint(token: str, what: str) -> int:
    if not _UINT.fullmatch(token):
        raise FormatError(f"{what} {token!r} is not a plain unsigned integer")
    return int(token)


def _check_uints(**values: int) -> None:
    for what, value in values.items():
        if value < 0:
            raise ValidationError(f"{what} is negative: {value}")


def _counted(args: Sequence[str], what: str) -> tuple[str, ...]:
    """Read ``[<count> <word>...]``: the optional feature list many targets end with."""
    if not args:
        return ()
    count = _uint(args[0], f"{what} feature count")
    if count != len(args) - 1:
        raise FormatError(f"{what} says {count} feature words but has {len(args) - 1}")
    return tuple(args[1:])


def _check_words(words: tuple[str, ...], what: str) -> None:
    for word in words:
        table_token(word, what=f"{what} feature")


class Target(ABC):
    """One target: its type name and its parameter string."""

    @property
    @abstractmethod
    def type_name(self) -> str: ...

    @abstractmethod
    def params(self) -> str: ...

    def kernel_params(self) -> str:
        """The parameters as loaded into the kernel. The same as :meth:`params`, except for a
        target holding a secret (:class:`Crypt`), whose ``params`` never shows it."""
        return self.params()


class Secret:
    """Key material read from a kernel table. Its ``str`` and ``repr`` are a placeholder, so
    a table formatted for a log line, an error, ``--json`` or the state file never carries
    the key; only :meth:`reveal` (used by the ioctl that loads a table) gives it out."""

    __slots__ = ("_value", "label")

    def __init__(self, value: str, label: str = "the key") -> None:
        self._value = value
        self.label = label

    def reveal(self) -> str:
        return self._value

    def labelled(self, label: str) -> Secret:
        """The same key, shown as ``<label>`` (e.g. ``key of crypthome``)."""
        return Secret(self._value, label)

    def __str__(self) -> str:
        return f"<{self.label}>"

    def __repr__(self) -> str:
        return f"Secret(<{self.label}>)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))

    def __reduce__(self) -> str | tuple[object, ...]:  # no pickling a key into a file
        raise TypeError("a Secret is not serialisable")


class Store(Enum):
    """The exception store of a snapshot: persistent, persistent with overflow, or transient."""

    PERSISTENT = "P"
    PERSISTENT_OVERFLOW = "PO"
    TRANSIENT = "N"


class _Typed(Target):
    TYPE: ClassVar[str]

    @property
    def type_name(self) -> str:
        return self.TYPE

    @classmethod
    @abstractmethod
    def from_args(cls, args: list[str]) -> _Typed: ...


@dataclass(frozen=True)
class Linear(_Typed):
    TYPE: ClassVar[str] = "linear"
    device: Dev
    offset: int = 0

    def __post_init__(self) -> None:
        _check_dev(self.device)
        _check_uints(offset=self.offset)

    def params(self) -> str:
        return f"{self.device} {self.offset}"

    @classmethod
    def from_args(cls, args: list[str]) -> Linear:
        dev, offset = _exactly(args, 2, cls.TYPE)
        return cls(parse_dev(dev), _uint(offset, "offset"))


@dataclass(frozen=True)
class SnapshotOrigin(_Typed):
    TYPE: ClassVar[str] = "snapshot-origin"
    device: Dev

    def __post_init__(self) -> None:
        _check_dev(self.device)

    def params(self) -> str:
        return str(self.device)

    @classmethod
    def from_args(cls, args: list[str]) -> SnapshotOrigin:
        (dev,) = _exactly(args, 1, cls.TYPE)
        return cls(parse_dev(dev))


@dataclass(frozen=True)
class _CowTarget(_Typed):
    origin: Dev
    cow: Dev
    store: Store
    chunk_sectors: int
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_dev(self.origin)
        _check_dev(self.cow)
        if self.chunk_sectors <= 0 or self.chunk_sectors & (self.chunk_sectors - 1):
            raise ValidationError(
                f"chunk size {self.chunk_sectors} is not a power of two",
                hint="use 8, 16, 32, ... sectors",
            )
        _check_words(self.features, self.TYPE)

    def params(self) -> str:
        text = f"{self.origin} {self.cow} {self.store.value} {self.chunk_sectors}"
        if self.features:
            text += f" {len(self.features)} " + " ".join(self.features)
        return text

    @classmethod
    def _fields(cls, args: list[str]) -> tuple[Dev, Dev, Store, int, tuple[str, ...]]:
        if len(args) < 4:
            raise FormatError(f"{cls.TYPE} needs <origin> <cow> P|PO|N <chunk>, got {args}")
        try:
            store = Store(args[2])
        except ValueError:
            raise FormatError(f"{cls.TYPE} store {args[2]!r} is not P, PO or N") from None
        chunk = _uint(args[3], "chunk size")
        return parse_dev(args[0]), parse_dev(args[1]), store, chunk, _counted(args[4:], cls.TYPE)


@dataclass(frozen=True)
class Snapshot(_CowTarget):
    TYPE: ClassVar[str] = "snapshot"

    @classmethod
    def from_args(cls, args: list[str]) -> Snapshot:
        return cls(*cls._fields(args))


@dataclass(frozen=True)
class SnapshotMerge(_CowTarget):
    TYPE: ClassVar[str] = "snapshot-merge"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.store is Store.TRANSIENT:
            raise ValidationError("a transient (N) snapshot cannot be merged")

    @classmethod
    def from_args(cls, args: list[str]) -> SnapshotMerge:
        return cls(*cls._fields(args))


@dataclass(frozen=True)
class Thin(_Typed):
    TYPE: ClassVar[str] = "thin"
    pool: Dev
    device_id: int
    external_origin: Dev | None = None

    def __post_init__(self) -> None:
        _check_dev(self.pool)
        _check_uints(device_id=self.device_id)
        if self.external_origin is not None:
            _check_dev(self.external_origin)

    def params(self) -> str:
        text = f"{self.pool} {self.device_id}"
        return text if self.external_origin is None else f"{text} {self.external_origin}"

    @classmethod
    def from_args(cls, args: list[str]) -> Thin:
        if len(args) not in (2, 3):
            raise FormatError(f"thin needs <pool> <id> [<origin>], got {args}")
        origin = parse_dev(args[2]) if len(args) == 3 else None
        return cls(parse_dev(args[0]), _uint(args[1], "thin device id"), origin)


@dataclass(frozen=True)
class ThinPool(_Typed):
    TYPE: ClassVar[str] = "thin-pool"
    metadata: Dev
    data: Dev
    block_sectors: int
    low_water_mark: int
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_dev(self.metadata)
        _check_dev(self.data)
        _check_uints(block_sectors=self.block_sectors, low_water_mark=self.low_water_mark)
        _check_words(self.features, self.TYPE)

    def params(self) -> str:
        # dm-thin.c emit_flags() always writes the count and a space after every word.
        head = f"{self.metadata} {self.data} {self.block_sectors} {self.low_water_mark}"
        return f"{head} {len(self.features)} " + "".join(f"{f} " for f in self.features)

    @classmethod
    def from_args(cls, args: list[str]) -> ThinPool:
        if len(args) < 4:
            raise FormatError(f"thin-pool needs <meta> <data> <block> <low water>, got {args}")
        return cls(
            parse_dev(args[0]),
            parse_dev(args[1]),
            _uint(args[2], "data block size"),
            _uint(args[3], "low water mark"),
            _counted(args[4:], cls.TYPE),
        )


@dataclass(frozen=True)
class Flakey(_Typed):
    TYPE: ClassVar[str] = "flakey"
    device: Dev
    offset: int
    up_seconds: int
    down_seconds: int
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_dev(self.device)
        _check_uints(offset=self.offset, up=self.up_seconds, down=self.down_seconds)
        _check_words(self.features, self.TYPE)

    def params(self) -> str:
        head = f"{self.device} {self.offset} {self.up_seconds} {self.down_seconds}"
        return f"{head} {len(self.features)}" + "".join(f" {f}" for f in self.features)

    @classmethod
    def from_args(cls, args: list[str]) -> Flakey:
        if len(args) < 4:
            raise FormatError(f"flakey needs <dev> <offset> <up> <down>, got {args}")
        dev, offset, up, down = args[:4]
        return cls(
            parse_dev(dev),
            _uint(offset, "offset"),
            _uint(up, "up interval"),
            _uint(down, "down interval"),
            _counted(args[4:], cls.TYPE),
        )


@dataclass(frozen=True)
class Error(_Typed):
    TYPE: ClassVar[str] = "error"

    def params(self) -> str:
        return ""

    @classmethod
    def from_args(cls, args: list[str]) -> Error:
        _exactly(args, 0, cls.TYPE)
        return cls()


@dataclass(frozen=True)
class Zero(_Typed):
    TYPE: ClassVar[str] = "zero"

    def params(self) -> str:
        return ""

    @classmethod
    def from_args(cls, args: list[str]) -> Zero:
        _exactly(args, 0, cls.TYPE)
        return cls()


@dataclass(frozen=True)
class Crypt(_Typed):
    """dm-crypt: ``<cipher> <key> <iv_offset> <device> <offset> [<#opt> <opt>...]``.

    The key is a :class:`Secret`: it may be hex key bytes, ``-`` (no key), or a kernel
    keyring reference ``:<size>:<type>:<description>``. Formatting the table (``params``)
    shows ``<key>``; only :meth:`kernel_params` gives the key, for the ioctl that loads the
    table, so the key moves from one kernel table to another inside one process."""

    TYPE: ClassVar[str] = "crypt"
    cipher: str
    key: Secret
    iv_offset: int
    device: Dev
    offset: int
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        table_token(self.cipher, what="crypt cipher")
        _check_dev(self.device)
        _check_uints(iv_offset=self.iv_offset, offset=self.offset)
        _check_words(self.features, self.TYPE)
        key = self.key.reveal()
        if not key or any(c.isspace() or not c.isprintable() for c in key):
            raise ValidationError("a crypt key must be one printable word")

    def _text(self, key: str) -> str:
        text = f"{self.cipher} {key} {self.iv_offset} {self.device} {self.offset}"
        if self.features:
            text += f" {len(self.features)} " + " ".join(self.features)
        return text

    def params(self) -> str:
        return self._text(str(self.key))

    def kernel_params(self) -> str:
        return self._text(self.key.reveal())

    @property
    def in_keyring(self) -> bool:
        """The key is a reference into the kernel keyring (LUKS2's default), not the bytes:
        another process may not be able to load it."""
        return self.key.reveal().startswith(":")

    @classmethod
    def from_args(cls, args: list[str]) -> Crypt:
        if len(args) < 5:
            raise FormatError(f"crypt takes at least 5 parameters, got {len(args)}")
        return cls(
            args[0],
            Secret(args[1]),
            _uint(args[2], "iv offset"),
            parse_dev(args[3]),
            _uint(args[4], "offset"),
            _counted(args[5:], cls.TYPE),
        )


@dataclass(frozen=True)
class Raw(Target):
    """A target snapkit does not model; its parameters are kept byte for byte."""

    kind: str
    text: str = ""

    def __post_init__(self) -> None:
        check_type_name(self.kind)
        if not self.text.isprintable():
            raise ValidationError(f"{self.kind} parameters contain a control character")

    @property
    def type_name(self) -> str:
        return self.kind

    def params(self) -> str:
        return self.text


def _exactly(args: list[str], n: int, what: str) -> list[str]:
    if len(args) != n:
        raise FormatError(f"{what} takes {n} parameters, got {len(args)}: {args}")
    return args


def check_type_name(name: str) -> str:
    table_token(name, what="target type")
    if len(name) >= DM_MAX_TYPE_NAME:
        raise ValidationError(f"target type {name!r} is longer than {DM_MAX_TYPE_NAME - 1}")
    return name


_PARSERS: dict[str, Callable[[list[str]], Target]] = {
    cls.TYPE: cls.from_args
    for cls in (
        Linear,
        SnapshotOrigin,
        Snapshot,
        SnapshotMerge,
        Thin,
        ThinPool,
        Flakey,
        Error,
        Zero,
        Crypt,
    )
}


def parse_target(type_name: str, params: str) -> Target:
    parser = _PARSERS.get(type_name)
    if parser is None:
        return Raw(type_name, params)
    return parser(params.split())


@dataclass(frozen=True)
class Line:
    """One table line: ``length`` sectors from ``start`` map to ``target``."""

    start: int
    length: int
    target: Target

    def __post_init__(self) -> None:
        if self.start < 0 or self.length <= 0:
            raise ValidationError(f"table line {self.start}+{self.length} is empty or negative")

    def format(self) -> str:
        return f"{self.start} {self.length} {self.target.type_name} {self.target.params()}"

    def kernel_format(self) -> str:
        return f"{self.start} {self.length} {self.target.type_name} {self.target.kernel_params()}"


def split_line(line: str) -> tuple[int, int, str, str]:
    """Split ``<start> <length> <type> <rest>``; shared by tables and status lines."""
    parts = line.split(" ", 3)
    if len(parts) < 3:
        raise FormatError(f"dm line {line!r} needs <start> <length> <type>")
    rest = parts[3] if len(parts) == 4 else ""
    return _uint(parts[0], "start"), _uint(parts[1], "length"), check_type_name(parts[2]), rest


def parse_line(text: str) -> Line:
    start, length, type_name, params = split_line(text)
    return Line(start, length, parse_target(type_name, params))


@dataclass(frozen=True)
class Table:
    """A whole table: lines that cover sectors 0..size-1 in order, with no gap."""

    lines: tuple[Line, ...]

    def __post_init__(self) -> None:
        if not self.lines:
            raise ValidationError("a dm table needs at least one line")
        expected = 0
        for line in self.lines:
            if line.start != expected:
                raise ValidationError(
                    f"table line at sector {line.start} leaves a gap or overlap at {expected}"
                )
            expected = line.start + line.length

    @classmethod
    def single(cls, length: int, target: Target) -> Table:
        return cls((Line(0, length, target),))

    @property
    def size(self) -> int:
        last = self.lines[-1]
        return last.start + last.length

    def __iter__(self) -> Iterator[Line]:
        return iter(self.lines)

    def format(self) -> str:
        return "".join(line.format() + "\n" for line in self.lines)


def parse_table(text: str) -> Table:
    """Parse ``dmsetup table`` output for one device (one line per target)."""
    return Table(tuple(parse_line(line) for line in text.split("\n") if line.strip()))


__all__ = [
    "Crypt",
    "Dev",
    "DevNum",
    "Error",
    "Flakey",
    "Line",
    "Linear",
    "Raw",
    "Secret",
    "Snapshot",
    "SnapshotMerge",
    "SnapshotOrigin",
    "Store",
    "Table",
    "Target",
    "Thin",
    "ThinPool",
    "Zero",
    "check_type_name",
    "parse_dev",
    "parse_line",
    "parse_table",
    "parse_target",
    "split_line",
]
