"""Which kernel a boot uses: ``--kernel SPEC``, ``--vm-kernel``, ``$VMTEST_KERNEL``.

A spec is ``debian:SUITE[/FLAVOUR]`` (the kernel package of a Debian suite; the cloud flavour
unless asked otherwise, since it boots fastest and has every dm target as a module) or a PATH
to a kernel the user built, with ``--modules DIR``. No spec means the recipe's own suite, so
``vmtest exec -- uname -r`` keeps printing the kernel it always did.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vmtests.vm.errors import KernelError

ENV = "VMTEST_KERNEL"
_SUITE = re.compile(r"[a-z]+(-(backports|security|updates|proposed-updates))?")
# 'amd64' is Debian's generic flavour; '6.12-cloud-amd64' is a second kernel line of a suite
_FLAVOUR = re.compile(r"(\d+\.\d+-)?(cloud-|rt-)?amd64")
_FLAVOUR_ALIASES = {"": "cloud-amd64", "cloud": "cloud-amd64", "generic": "amd64"}


@dataclass(frozen=True)
class DebianKernel:
    """The kernel of a Debian suite: the meta-package ``linux-image-FLAVOUR`` resolves it."""

    suite: str
    flavour: str = "cloud-amd64"

    @property
    def package(self) -> str:
        return f"linux-image-{self.flavour}"

    def __str__(self) -> str:
        return f"debian:{self.suite}/{self.flavour}"


@dataclass(frozen=True)
class UserKernel:
    """A kernel the user built: a bzImage, a vmlinux or a build tree, and its modules."""

    path: Path
    modules: Path | None = None

    def __str__(self) -> str:
        return str(self.path) + (f" (modules {self.modules})" if self.modules else "")


KernelSpec = DebianKernel | UserKernel


def parse(text: str, *, modules: Path | None = None) -> KernelSpec:
    """Parse a spec; a malformed ``debian:`` spec is refused in one line that shows the form."""
    if text.startswith("debian:"):
        if modules is not None:
            raise KernelError("--modules goes with a kernel PATH, not with a debian: spec")
        suite, _, flavour = text.removeprefix("debian:").partition("/")
        if not _SUITE.fullmatch(suite):
            raise KernelError(f"{text}: not a Debian suite (e.g. debian:trixie)")
        flavour = _FLAVOUR_ALIASES.get(flavour, flavour)
        if not _FLAVOUR.fullmatch(flavour):
            raise KernelError(f"{text}: the flavour is cloud, amd64 or e.g. 6.12-cloud-amd64")
        return DebianKernel(suite, flavour)
    if not text:
        raise KernelError("an empty kernel spec: give debian:SUITE[/FLAVOUR] or a PATH")
    path = Path(text).expanduser()
    if not path.exists():
        raise KernelError(f"{text}: no such file or directory (a kernel is debian:SUITE or a PATH)")
    return UserKernel(path.resolve(), modules.resolve() if modules else None)


def chosen(text: str | None, *, modules: Path | None = None, default_suite: str) -> KernelSpec:
    """The spec a command boots: the option, else ``$VMTEST_KERNEL``, else the recipe's suite."""
    text = text or os.environ.get(ENV) or None
    if text is None:
        if modules is not None:
            raise KernelError("--modules needs --kernel PATH")
        return DebianKernel(default_suite)
    return parse(text, modules=modules)


def split_list(text: str) -> list[str]:
    """``--kernels debian:bookworm,debian:trixie`` -> the specs, in order, without repeats."""
    out: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if item and item not in out:
            out.append(item)
    if not out:
        raise KernelError("--kernels: give one or more specs separated by commas")
    return out


def add_options(
    p: argparse._ActionsContainer, *, modules_to: argparse._ActionsContainer | None = None
) -> None:
    """--kernel and --modules, for every command that boots; ``p`` is a parser or an argument
    group, and ``modules_to`` another group for --modules (``vmtest run``: the campaign's)."""
    p.add_argument(
        "--kernel",
        metavar="SPEC",
        help="debian:SUITE[/FLAVOUR] (cloud by default, /amd64 generic) or a PATH to a "
        f"bzImage, vmlinux or build tree (default: ${ENV}, else the recipe's suite)",
    )
    (modules_to or p).add_argument(
        "--modules",
        type=Path,
        metavar="DIR",
        help="with --kernel PATH: a 'make modules_install INSTALL_MOD_PATH=DIR' tree",
    )


__all__ = [
    "ENV",
    "DebianKernel",
    "KernelSpec",
    "UserKernel",
    "add_options",
    "chosen",
    "parse",
    "split_list",
]
