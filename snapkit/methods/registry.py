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
from snapkit.methods.base import Host, Method

Factory = Callable[[Host], Method]

METHODS: dict[str, str] = {
    "dm": "snapkit.methods.dm.snapshot:DmMethod",
    "dm-direct": "snapkit.methods.dm.direct:DmDirectMethod",
    "lvm": "snapkit.methods.lvm.snapshot:LvmMethod",
    "lvm-thin": "snapkit.methods.lvm.thin:LvmThinMethod",
    "btrfs": "snapkit.methods.btrfs.snapshot:BtrfsMethod",
    "freeze": "snapkit.methods.freeze:FreezeMethod",
    "remount-ro": "snapkit.methods.remount:RemountMethod",
    "auto": "snapkit.methods.auto:AutoMethod",
}

DEFAULT_METHOD = "auto"


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


__all__ = ["DEFAULT_METHOD", "METHODS", "Factory", "factory", "get", "names"]
