"""``--method`` name -> the class that implements it.

Each entry is a factory taking the :class:`~snapkit.methods.base.Host` (the dm control, the
command executor, loop devices and files), so every method acts on the system only through
seams that tests can fake. Add a method with one line here.
"""

from __future__ import annotations

from collections.abc import Callable

from snapkit.errors import UsageError
from snapkit.methods.auto import AutoMethod
from snapkit.methods.base import Host, Method
from snapkit.methods.btrfs import BtrfsMethod
from snapkit.methods.dm import DmMethod
from snapkit.methods.dm_direct import DmDirectMethod
from snapkit.methods.freeze import FreezeMethod
from snapkit.methods.lvm import LvmMethod
from snapkit.methods.lvm_thin import LvmThinMethod
from snapkit.methods.remount import RemountMethod

Factory = Callable[[Host], Method]

METHODS: dict[str, Factory] = {
    DmMethod.name: DmMethod,
    DmDirectMethod.name: DmDirectMethod,
    LvmMethod.name: LvmMethod,
    LvmThinMethod.name: LvmThinMethod,
    BtrfsMethod.name: BtrfsMethod,
    FreezeMethod.name: FreezeMethod,
    RemountMethod.name: RemountMethod,
    AutoMethod.name: AutoMethod,
}

DEFAULT_METHOD = "auto"


def names() -> tuple[str, ...]:
    return tuple(METHODS)


def get(name: str, host: Host) -> Method:
    try:
        factory = METHODS[name]
    except KeyError:
        raise UsageError(
            f"unknown method {name!r}", hint=f"choose one of: {', '.join(METHODS)}"
        ) from None
    return factory(host)


__all__ = ["DEFAULT_METHOD", "METHODS", "Factory", "get", "names"]
