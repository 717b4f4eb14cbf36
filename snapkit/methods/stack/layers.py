"""The layers above a stacked snapshot, as recorded and as rebuilt.

The record keeps, for each pass-through layer of the origin (bottom first), its dm name and
uuid, its table *as text with the key shown as ``<key of NAME>``*, and the name of the layer
rebuilt over the snapshot. The key itself is never recorded: whenever a layer is rebuilt,
its key is read from the origin's live table through the dm ioctl, and loaded into the new
table through the same ioctl, inside this one process (:class:`~snapkit.dm.table.Secret`).

Parking. A merge needs the device under the origin's crypt mapping closed (LVM will not merge
into an open origin, and the kernel's merge must not run under a stale cache). Removing the
mapping would drop the key with it, and a crash before it was reopened would leave nothing
to reopen it from. So the lowest pass-through layer is *parked* instead: its table is
reloaded over a zero device (``NAME-park``), which releases the origin, keeps the mapping's
name, uuid and key in the kernel, and is undone by reloading it over the origin again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace

from snapkit.dm import steps
from snapkit.dm.control import DmControl
from snapkit.dm.naming import Role, uuid
from snapkit.dm.table import Crypt, Dev, Line, Linear, Table, Target, Zero
from snapkit.errors import OperationError, RefusedError
from snapkit.host.stack import Stack
from snapkit.plan import Step

MAPPER = "/dev/mapper/"
BELOW = "/dev/below"  # stands for the layer's device in a recorded table


@dataclass(frozen=True)
class Upper:
    """One pass-through layer of the origin, and its counterpart over the snapshot."""

    kind: str  # crypt | linear
    name: str  # the origin's layer (e.g. crypthome)
    uuid: str  # its dm uuid, kept when it is reloaded
    table: str  # as recorded: the key shown as <key of NAME>, the device as BELOW
    upper: str  # the layer rebuilt over the snapshot (e.g. s1-crypt)

    def shown(self, below: str) -> str:
        """The table as a log line or ``--json`` may show it: never the key."""
        return self.table.replace(BELOW, below)

    def as_json(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "name": self.name,
            "uuid": self.uuid,
            "table": self.table,
            "upper": self.upper,
        }


@dataclass(frozen=True)
class StackInfo:
    """What a stacked record keeps under ``details["stack"]`` (JSON)."""

    top: str  # the filesystem's device, e.g. /dev/mapper/crypthome
    mountpoint: str
    base: str  # the layer the method snapshotted, e.g. /dev/mapper/vg-home
    base_snapshot: str  # the method's snapshot device, e.g. /dev/mapper/vg-s1
    uppers: tuple[Upper, ...]  # bottom first
    park: str  # the zero device a merge parks the lowest layer on
    key_file: str = ""  # --key-file: cryptsetup unlocks the LUKS header (stack/luks.py)

    @property
    def device(self) -> str:
        """The plaintext snapshot device: the top of the rebuilt stack."""
        return MAPPER + self.uppers[-1].upper

    def to_text(self) -> str:
        return json.dumps(
            {
                "top": self.top,
                "mountpoint": self.mountpoint,
                "base": self.base,
                "base_snapshot": self.base_snapshot,
                "uppers": [u.as_json() for u in self.uppers],
                "park": self.park,
                "key_file": self.key_file,
            },
            sort_keys=True,
        )

    @classmethod
    def of(cls, details: Mapping[str, str], key: str) -> StackInfo:
        try:
            d = json.loads(details[key])
            return cls(
                d["top"],
                d["mountpoint"],
                d["base"],
                d["base_snapshot"],
                tuple(Upper(**u) for u in d["uppers"]),
                d["park"],
                d.get("key_file", ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RefusedError(
                f"the stack of this snapshot is unreadable in the state file ({exc})",
                hint="discard it with --force",
            ) from None

    def layers(self) -> list[dict[str, str]]:
        """``status --json``'s ``layers``: the snapshot's stack, bottom first."""
        found = [{"kind": "snapshot", "device": self.base_snapshot, "of": self.base}]
        below = self.base_snapshot
        for u in self.uppers:
            device = MAPPER + u.upper
            found.append(
                {"kind": u.kind, "device": device, "of": MAPPER + u.name, "table": u.shown(below)}
            )
            below = device
        return found


def template(table: Table, name: str) -> str:
    """A layer's table as recorded: the key shown as ``<key of NAME>``, the device as BELOW."""
    return labelled(moved(table, BELOW), name).format().strip()


def labelled(table: Table, name: str) -> Table:
    """``table`` with its crypt key shown as ``<key of NAME>``."""
    lines = []
    for line in table:
        t = line.target
        if isinstance(t, Crypt):
            t = replace(t, key=t.key.labelled(f"key of {name}"))
        lines.append(Line(line.start, line.length, t))
    return Table(tuple(lines))


def uppers_of(stack: Stack, snapshot: str) -> tuple[Upper, ...]:
    """Name the layers to rebuild over snapshot ``snapshot``: ``NAME-crypt`` for one crypt
    layer, ``NAME-crypt``, ``NAME-linear1``... when there are more."""
    found: list[Upper] = []
    for layer in reversed(stack.above):
        kind = layer.kind.value
        taken = [u for u in found if u.kind == kind]
        name = f"{snapshot}-{kind}" + (str(len(taken)) if taken else "")
        assert layer.table is not None  # a pass-through layer has its table
        text = template(layer.table, layer.name)
        found.append(Upper(kind, layer.name, layer.info.dm_uuid or "", text, name))
    return tuple(found)


def _with_device(target: Target, device: Dev) -> Target:
    if isinstance(target, Crypt | Linear):
        return replace(target, device=device)
    raise OperationError(f"a {target.type_name} layer cannot be moved")


def moved(table: Table, device: Dev) -> Table:
    return Table(tuple(Line(ln.start, ln.length, _with_device(ln.target, device)) for ln in table))


def live_table(dm: DmControl, upper: Upper) -> Table:
    """The origin layer's live table, checked against the record: the same kind, with the
    same parameters apart from the device (the key, held as a Secret, is compared too only in
    that it must be there)."""
    table = dm.table(upper.name) if dm.info(upper.name) is not None else None
    if table is None:
        raise RefusedError(
            f"{MAPPER}{upper.name} is not open, and its key is needed for the snapshot's layer",
            hint=f"open {upper.name} (e.g. cryptsetup open, or your crypttab), then run "
            "'snapkit recover'",
        )
    if template(table, upper.name) != upper.table:
        raise RefusedError(
            f"{MAPPER}{upper.name} no longer has the table the snapshot was taken under",
            hint="its layer cannot be rebuilt; discard the snapshot",
        )
    return table


def refuse_keyring(stack: Stack) -> None:
    """LUKS2 keeps the volume key in the kernel keyring and the table names it; another
    process cannot load that reference, so the layer could not be rebuilt."""
    for layer in stack.above:
        target = layer.table.lines[0].target if layer.table else None
        if isinstance(target, Crypt) and target.in_keyring:
            raise RefusedError(
                f"the key of {layer.path} is in the kernel keyring, not in its table",
                hint="give --key-file FILE to have cryptsetup unlock the snapshot's LUKS "
                "header, or open the mapping with 'cryptsetup open --disable-keyring'",
            )


def build_steps(dm: DmControl, info: StackInfo, *, read_only: bool) -> list[Step]:
    """Create the layers over the snapshot, bottom first, with the origin layers' keys."""
    out: list[Step] = []
    below = info.base_snapshot
    for u in info.uppers:
        under = below

        def table(u: Upper = u, under: str = under) -> Table:
            return moved(live_table(dm, u), under)

        out += [
            steps.create(dm, u.upper, uuid(u.upper, Role.UPPER)),
            steps.load(dm, u.upper, table, u.shown(under), ro=read_only),
            steps.resume(dm, u.upper),
        ]
        below = MAPPER + u.upper
    return out


def remove_steps(dm: DmControl, info: StackInfo, *, read_only: bool) -> list[Step]:
    """Remove the snapshot's layers, top first; each undo rebuilds the one it removed."""
    out: list[Step] = []
    uppers = list(info.uppers)
    for i in reversed(range(len(uppers))):
        u = uppers[i]
        under = info.base_snapshot if i == 0 else MAPPER + uppers[i - 1].upper

        def restore(u: Upper = u, under: str = under) -> None:
            dm.create(u.upper, uuid=uuid(u.upper, Role.UPPER))
            dm.load(u.upper, moved(live_table(dm, u), under), read_only=read_only)
            dm.resume(u.upper)

        out.append(steps.remove(dm, u.upper, restore))
    return out


def park_steps(dm: DmControl, info: StackInfo, size: int) -> list[Step]:
    """Reload the origin's lowest layer over the zero device ``info.park``: the base is
    released, the mapping (name, uuid, key) stays. Undo reloads it over the base."""
    low = info.uppers[0]
    zero = Table.single(size, Zero())
    return [
        steps.create(dm, info.park, uuid(info.park, Role.PARK)),
        steps.load(dm, info.park, lambda: zero, steps.table_text(zero)),
        steps.resume(dm, info.park),
        Step(
            f"dmsetup reload {low.name} over {MAPPER}{info.park} (suspend --nolockfs, resume)",
            lambda: move(dm, low, MAPPER + info.park),
            lambda: move(dm, low, info.base),
            f"reload {low.name} over {info.base} again",
            must_undo=True,
        ),
    ]


def unpark_steps(dm: DmControl, info: StackInfo) -> list[Step]:
    low = info.uppers[0]
    return [
        Step(
            f"dmsetup reload {low.name} over {info.base} (suspend --nolockfs, resume)",
            lambda: move(dm, low, info.base),
        ),
        steps.remove(dm, info.park),
    ]


def move(dm: DmControl, upper: Upper, device: str) -> None:
    """Point the origin layer ``upper`` at ``device``: load, suspend without lockfs (nothing
    is mounted from it: the plan checked), resume."""
    table = moved(live_table(dm, upper), device)
    dm.load(upper.name, table)
    dm.suspend(upper.name, lockfs=False)
    dm.resume(upper.name, lockfs=False)


def parked(dm: DmControl, info: StackInfo) -> bool:
    """Is the origin's lowest layer parked on the zero device (a merge cut short)?"""
    park = dm.info(info.park)
    table = dm.table(info.uppers[0].name) if dm.info(info.uppers[0].name) else None
    target = table.lines[0].target if table else None
    return (
        park is not None
        and isinstance(target, Crypt | Linear)
        and str(target.device) in (str(park.dev), MAPPER + info.park)
    )


__all__ = [
    "StackInfo",
    "Upper",
    "build_steps",
    "labelled",
    "live_table",
    "move",
    "moved",
    "park_steps",
    "parked",
    "refuse_keyring",
    "remove_steps",
    "template",
    "unpark_steps",
    "uppers_of",
]
