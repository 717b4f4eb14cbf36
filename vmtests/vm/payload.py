"""The per-boot initramfs archive: snapkit's files, the init, and what this boot must do.

It is appended to the cached base initramfs (the kernel unpacks concatenated archives, later
members winning), so the guest always runs the current ``snapkit/`` and ``vmtests/guest/``
without an image rebuild. Building it takes milliseconds.

Which files: a *tree* is a folder that holds ``snapkit/`` and ``vmtests/`` (with
``vmtests/guest/`` and the recipe ``vmtests/images/``). The default is the folder the running
harness was imported from, so the guest runs the very snapkit the host runs, with no guessing:
in a checkout (``pip install -e``, as ``make venv`` does) that is the working tree, so the test
suite tests the checkout; in a ``pip install 'snapkit[harness]'`` it is the installed package's
``site-packages``. ``is_checkout`` tells the two apart by the ``pyproject.toml`` beside a
checkout, for messages only. ``vmtest exec --tree DIR`` ships another tree.

The command to run travels as one file per argument, never as a string, so no argument is
re-split or unquoted on the way in, whatever bytes it holds.

Python sources travel with hash-checked ``.pyc`` files compiled on the host: the guest cannot
write bytecode (its root is read-only and the env says not to), and compiling snapkit from
source under TCG costs seconds at every ``snapkit`` start. The guest checks each file against
its source's hash, so a stale one is never used; a host Python of another minor version
writes files under another cache tag, which the guest simply ignores.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import importlib.util
import marshal
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmtests.vm import cpio

TREE = Path(__file__).resolve().parents[2]  # the folder holding this vmtests/ (and snapkit/)
_NEEDED = ("snapkit/__init__.py", "vmtests/guest/stage2.sh", "vmtests/images/init.sh")
_SKIP = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache"})
_SNAPKIT_WRAPPER = b'#!/bin/sh\nexec python3 -S -m snapkit "$@"\n'  # -S: no site, stdlib only


class Mode(enum.StrEnum):
    EXEC = "exec"  # run one command with its streams on ports, then power off
    AGENT = "agent"  # run the agent: many commands and file copies over one port


EXEC_PORTS = ("stdin", "stdout", "stderr", "status")
AGENT_PORTS = ("agent",)
# The port a restored guest receives its payload, clock and seed on (vmtests.vm.resume).
CONTROL_PORT = "vmtest-ctl"


@dataclass(frozen=True)
class Payload:
    mode: Mode
    argv: tuple[str, ...] = ()
    hostname: str = "vmtest"
    env: dict[str, str] = field(default_factory=dict)
    tree: Path = TREE  # where snapkit/ and vmtests/ come from (see the module's docstring)
    # A boot from a saved state (vmtests.vm.resume): one more port, on which this payload
    # arrives after the restore instead of in the initramfs.
    resumed: bool = False

    @property
    def ports(self) -> tuple[str, ...]:
        own = EXEC_PORTS if self.mode is Mode.EXEC else AGENT_PORTS
        return (CONTROL_PORT, *own) if self.resumed else own


def check_tree(tree: Path) -> Path:
    """``tree`` if it holds what a boot ships, else a one-line error naming what is missing."""
    for needed in _NEEDED:
        if not (tree / needed).is_file():
            raise ValueError(
                f"{tree} is not a snapkit tree: it has no {needed} (give the folder that "
                "holds snapkit/ and vmtests/: a checkout, or an installed site-packages)"
            )
    return tree


def is_checkout(tree: Path) -> bool:
    """Whether ``tree`` is a source checkout (its pyproject.toml beside snapkit/), not an
    installed package: only for saying which one a guest runs."""
    return (tree / "pyproject.toml").is_file()


def _guest_env(tree: Path, extra: dict[str, str]) -> bytes:
    base = (tree / "vmtests" / "images" / "guest.env").read_text()
    for key, value in extra.items():
        if not key.isidentifier() or "\n" in value or "'" in value:
            raise ValueError(f"guest environment {key}={value!r} cannot be passed safely")
        base += f"{key}='{value}'\n"
    return base.encode()


_PYC_CACHE: dict[tuple[str, bytes], bytes] = {}
_FLAGS_CHECKED_HASH = (0b11).to_bytes(4, "little")  # PEP 552: hash-based, check source


def _pyc(guest_path: str, source: bytes) -> bytes:
    key = (guest_path, hashlib.sha256(source).digest())
    if key not in _PYC_CACHE:
        code = compile(source, guest_path, "exec", dont_inherit=True)
        header = importlib.util.MAGIC_NUMBER + _FLAGS_CHECKED_HASH
        _PYC_CACHE[key] = header + importlib.util.source_hash(source) + marshal.dumps(code)
    return _PYC_CACHE[key]


def with_bytecode(entries: list[cpio.Entry]) -> list[cpio.Entry]:
    """Add a ``__pycache__/NAME.TAG.pyc`` beside every ``.py`` file entry."""
    out = list(entries)
    tag = sys.implementation.cache_tag
    for entry in entries:
        if entry.name.endswith(".py") and entry.data:
            folder, _, name = entry.name.rpartition("/")
            pyc = f"{folder}/__pycache__/{name[:-3]}.{tag}.pyc"
            out.append(cpio.Entry.file(pyc, _pyc("/" + entry.name, entry.data)))
    return out


def tree_sources(tree: Path, prefix: str = "src") -> list[cpio.Entry]:
    """What the guest sees at /src, without bytecode: snapkit/, vmtests/guest/ and the
    ``snapkit`` wrapper. Names start with ``prefix`` ("" for the root of a tree disk)."""
    check_tree(tree)
    at = f"{prefix}/" if prefix else ""
    e = cpio.Entry
    return [
        *cpio.tree(tree / "snapkit", f"{at}snapkit", skip=_SKIP),
        *cpio.tree(tree / "vmtests" / "guest", f"{at}vmtests/guest", skip=_SKIP),
        e.file(f"{at}vmtests/__init__.py", b""),
        e.file(f"{at}bin/snapkit", _SNAPKIT_WRAPPER, 0o755),
    ]


def boot_files(payload: Payload) -> list[cpio.Entry]:
    """What only this boot has, at /vmtest: environment, mode, hostname, ports, argv."""
    e = cpio.Entry
    entries = [
        e.file("vmtest/env", _guest_env(payload.tree, payload.env)),
        e.file("vmtest/mode", f"{payload.mode}\n".encode()),
        e.file("vmtest/hostname", f"{payload.hostname}\n".encode()),
        e.file("vmtest/ports", (" ".join(payload.ports) + "\n").encode()),
        e.directory("vmtest/argv"),
    ]
    entries += [e.file(f"vmtest/argv/{i:05d}", a.encode()) for i, a in enumerate(payload.argv)]
    return entries


def build(payload: Payload) -> bytes:
    """A cold boot's per-boot archive: the init, the tree with its bytecode, the boot's files."""
    tree = check_tree(payload.tree)
    init = (tree / "vmtests" / "images" / "init.sh").read_bytes()
    entries = [
        cpio.Entry.file("init", init, 0o755),
        *with_bytecode(tree_sources(tree)),
        *boot_files(payload),
    ]
    return cpio.archive(entries)


def resumed_files(payload: Payload) -> dict[str, str]:
    """What a restored guest receives over its control port, name -> base64 (the protocol of
    vmtests/guest/park.py): only this boot's files. Its tree comes on a read-only disk
    (vmtests.vm.treedisk), so the port carries a few kilobytes."""
    out = {}
    for entry in boot_files(payload):
        if stat.S_ISREG(entry.mode):
            out[entry.name] = base64.b64encode(entry.data).decode()
    return out


def build_park(payload: Payload) -> bytes:
    """The initramfs part of a boot that is saved, not used: the init, the script that waits
    for a restore (vmtests/guest/park.py) and the port list; no tree, no command, no
    environment, so nothing of a later boot's payload can come from a saved state."""
    tree = check_tree(payload.tree)
    guest = tree / "vmtests" / "guest"
    e = cpio.Entry
    return cpio.archive(
        [
            e.file("init", (tree / "vmtests" / "images" / "init.sh").read_bytes(), 0o755),
            e.directory("src"),
            e.file("vmtest/ports", (" ".join(payload.ports) + "\n").encode()),
            e.file("vmtest-park/park.py", (guest / "park.py").read_bytes()),
        ]
    )


def command_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """Check an argv for the guest: arguments cannot hold NUL bytes (neither can execve's)."""
    if not argv:
        raise ValueError("no command given")
    for arg in argv:
        if "\0" in arg:
            raise ValueError(f"argument {arg[:20]!r}... holds a NUL byte, which no argv can carry")
    return tuple(argv)


__all__ = [
    "AGENT_PORTS",
    "CONTROL_PORT",
    "EXEC_PORTS",
    "TREE",
    "Mode",
    "Payload",
    "boot_files",
    "build",
    "build_park",
    "check_tree",
    "command_argv",
    "is_checkout",
    "resumed_files",
    "tree_sources",
    "with_bytecode",
]
