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

import enum
import hashlib
import importlib.util
import marshal
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


def build(payload: Payload, *, init: bool = True) -> bytes:
    """The per-boot archive; without ``init`` for a restored guest, which is past its init."""
    tree = check_tree(payload.tree)
    e = cpio.Entry
    python = [
        *cpio.tree(tree / "snapkit", "src/snapkit", skip=_SKIP),
        *cpio.tree(tree / "vmtests" / "guest", "src/vmtests/guest", skip=_SKIP),
        e.file("src/vmtests/__init__.py", b""),
    ]
    entries = [
        *([e.file("init", (tree / "vmtests" / "images" / "init.sh").read_bytes(), 0o755)] * init),
        *with_bytecode(python),
        e.file("src/bin/snapkit", _SNAPKIT_WRAPPER, 0o755),
        e.file("vmtest/env", _guest_env(tree, payload.env)),
        e.file("vmtest/mode", f"{payload.mode}\n".encode()),
        e.file("vmtest/hostname", f"{payload.hostname}\n".encode()),
        e.file("vmtest/ports", (" ".join(payload.ports) + "\n").encode()),
        e.directory("vmtest/argv"),
    ]
    entries += [e.file(f"vmtest/argv/{i:05d}", a.encode()) for i, a in enumerate(payload.argv)]
    return cpio.archive(entries)


def build_park(payload: Payload) -> bytes:
    """The initramfs part of a boot that is saved, not used: the init, the scripts that wait
    for a restore (vmtests/guest/park.sh, park.py) and the port list; no tree, no command, no
    environment, so nothing of a later boot's payload can come from a saved state."""
    tree = check_tree(payload.tree)
    guest = tree / "vmtests" / "guest"
    e = cpio.Entry
    return cpio.archive(
        [
            e.file("init", (tree / "vmtests" / "images" / "init.sh").read_bytes(), 0o755),
            e.directory("src"),
            e.file("vmtest/ports", (" ".join(payload.ports) + "\n").encode()),
            e.file("vmtest-park/park.sh", (guest / "park.sh").read_bytes()),
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
    "build",
    "build_park",
    "check_tree",
    "command_argv",
    "is_checkout",
]
