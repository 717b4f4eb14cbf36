"""How snapkit names and marks the dm devices it creates.

Every device snapkit creates carries the dm uuid ``SNAPKIT-<name>-<role>``: the uuid is set at
create time, cannot be changed later, and is listed by the kernel, so after a reboot, a lost
state file or a crash between two steps, ``snapkit`` can tell its devices from anyone else's
and rebuild what it knows (``snapkit.state``). The role is the last ``-`` word, so names may
contain ``-``.

Roles: ``origin`` (a device made by ``device prepare``), ``real`` (the origin's old table, the
LVM way), ``snap`` (a snapshot device, the LVM way), ``view`` (the read-only view of a
``dm-direct`` snapshot), ``base`` (an intermediate linear device), ``upper`` (a layer rebuilt
over a snapshot of a stacked filesystem, e.g. its crypt mapping) and ``park`` (the zero device
an origin's crypt mapping holds on to while the device under it merges).
"""

from __future__ import annotations

import enum

from snapkit.errors import ValidationError
from snapkit.validate import dm_name

UUID_PREFIX = "SNAPKIT-"
NAME_MAX = 64  # leaves room for "-real"/"-base" and the uuid's prefix and role in 127 bytes


class Role(enum.StrEnum):
    ORIGIN = "origin"
    REAL = "real"
    SNAP = "snap"
    VIEW = "view"
    BASE = "base"
    UPPER = "upper"
    PARK = "park"


def snapkit_name(name: str, *, what: str = "snapshot name") -> str:
    """A name snapkit will create devices from: dm-safe and short enough for every suffix."""
    dm_name(name, what=what)
    if len(name) > NAME_MAX:
        raise ValidationError(
            f"the {what} is {len(name)} characters long",
            hint=f"snapkit names are at most {NAME_MAX} characters; shorten it",
        )
    return name


def uuid(name: str, role: Role) -> str:
    return f"{UUID_PREFIX}{name}-{role}"


def parse_uuid(text: str) -> tuple[str, Role] | None:
    """``(name, role)`` of a snapkit uuid, None for anyone else's."""
    if not text.startswith(UUID_PREFIX):
        return None
    name, sep, role = text[len(UUID_PREFIX) :].rpartition("-")
    if not sep or not name:
        return None
    try:
        return name, Role(role)
    except ValueError:
        return None


def real_name(origin: str) -> str:
    return f"{origin}-real"


def base_name(snapshot: str) -> str:
    return f"{snapshot}-base"


__all__ = [
    "NAME_MAX",
    "UUID_PREFIX",
    "Role",
    "base_name",
    "parse_uuid",
    "real_name",
    "snapkit_name",
    "uuid",
]
