"""``--method`` name -> the class that implements it, imported only when asked for.

Each entry names a ``module:Class`` whose constructor takes the
:class:`~snapkit.methods.base.Host` (the dm control, the command executor, loop devices and
files), so every method acts on the system only through seams that tests can fake. Only the
asked-for module is imported: under TCG in a guest every import costs ~25x more, and
``snapshot list`` of lvm records has no business loading btrfs or the freeze watchdog. Add a
method with one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from snapkit.errors import UsageError
from snapkit.methods.base import Context, Host, Method, Recoverable

Factory = Callable[[Host], Method]

METHODS: dict[str, str] = {
    "dm": "snapkit.methods.dm.snapshot:DmMethod",
    "dm-direct": "snapkit.methods.dm.direct:DmDirectMethod",
    "lvm": "snapkit.methods.lvm.snapshot:LvmMethod",
    "lvm-thin": "snapkit.methods.lvm.thin:LvmThinMethod",
    "btrfs": "snapkit.methods.btrfs.snapshot:BtrfsMethod",
    "zfs": "snapkit.methods.zfs.snapshot:ZfsMethod",
    "freeze": "snapkit.methods.freeze:FreezeMethod",
    "remount-ro": "snapkit.methods.remount:RemountMethod",
    "auto": "snapkit.methods.auto:AutoMethod",
}

DEFAULT_METHOD = "auto"

# Each method family's recovery (``module:Class``, constructed with a Context), in the order
# recover runs them: device-mapper first, as it re-assembles the devices the others may sit on.
RECOVERIES: tuple[str, ...] = (
    "snapkit.methods.dm.recover:DmRecovery",
    "snapkit.methods.lvm.recover:LvmRecovery",
    "snapkit.methods.btrfs.recover:BtrfsRecovery",
    "snapkit.methods.zfs.recover:ZfsRecovery",
    # last: the layers over a stacked snapshot sit on what dm and lvm re-assembled
    "snapkit.methods.stack.recover:StackRecovery",
    # after every family: a group cut short is removed member by member, by their methods
    "snapkit.methods.group.recover:GroupRecovery",
)


def names() -> tuple[str, ...]:
    return tuple(METHODS)


def factory(name: str) -> Factory:
    """The class for ``name``, importing its module now (and only it)."""
    try:
        where = METHODS[name]
    except KeyError:
        raise UsageError(
            f"unknown method {name!r}", hint=f"choose one of: {', '.join(METHODS)}"
        ) from None
    module, _, cls = where.partition(":")
    found = getattr(importlib.import_module(module), cls)
    if getattr(found, "name", None) != name:  # the map and the class must agree
        raise AssertionError(f"{where} is named {getattr(found, 'name', None)!r}, not {name!r}")
    return cast(Factory, found)


def get(name: str, host: Host) -> Method:
    return factory(name)(host)


def recoveries(ctx: Context) -> list[Recoverable]:
    """Every family's recovery, importing their modules now (recover needs them all)."""
    found = []
    for where in RECOVERIES:
        module, _, cls = where.partition(":")
        found.append(cast(Recoverable, getattr(importlib.import_module(module), cls)(ctx)))
    return found


__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "RECOVERIES",
    "Factory",
    "factory",
    "get",
    "names",
    "recoveries",
]
