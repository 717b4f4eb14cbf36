"""LVM, typed: ``lvs --reportformat json`` parsed into records.

Every report asks for the same fixed field list, in bytes without suffixes, so that parsing never
depends on the user's lvm.conf (units, separators, column order). Only this module knows LVM's
text; methods see :class:`LogicalVolume` records.

The ``lv_attr`` letters used here (lvm2 ``lib/report/report.c``, ``_lvattr_disp``):

* 1st, the volume type: ``s`` snapshot, ``S`` merging snapshot, ``o`` origin, ``O`` origin with a
  merging snapshot, ``V`` thin volume, ``t`` thin pool;
* 5th, the state: ``a`` active, ``I`` invalid snapshot, ``m`` merge failed;
* 6th, ``o`` when the device is open (mounted, or held by a process);
* 10th, ``k`` when the volume skips activation (thin snapshots do, by default).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from snapkit.errors import CommandError, FormatError
from snapkit.run import Executor

LVS_FIELDS = (
    "lv_name",
    "vg_name",
    "origin",
    "pool_lv",
    "segtype",
    "lv_attr",
    "lv_size",
    "data_percent",
    "lv_merging",
    "lv_path",
    "lv_dm_path",
    "lv_kernel_major",
    "lv_kernel_minor",
)


@dataclass(frozen=True)
class LogicalVolume:
    vg: str
    name: str
    origin: str | None
    pool: str | None
    segtype: str
    attr: str
    size: int  # bytes
    data_percent: float | None
    merging: bool
    path: str
    dm_path: str
    devnum: tuple[int, int] | None  # None when inactive

    @property
    def full_name(self) -> str:
        return f"{self.vg}/{self.name}"

    @property
    def hidden(self) -> bool:
        """An internal LV (``[pool_tdata]``) or a snapshot hidden while it merges."""
        return self.name.startswith("[")

    @property
    def is_thin(self) -> bool:
        return self.segtype == "thin"

    @property
    def is_snapshot(self) -> bool:
        """A classic (COW) snapshot, merging or not."""
        return self.attr[:1] in ("s", "S")

    @property
    def is_thin_snapshot(self) -> bool:
        return self.is_thin and self.origin is not None

    @property
    def is_open(self) -> bool:
        return self.attr[5:6] == "o"

    @property
    def active(self) -> bool:
        return self.devnum is not None

    @property
    def invalid(self) -> bool:
        return self.attr[4:5] in ("I", "m")

    @property
    def skips_activation(self) -> bool:
        return self.attr[9:10] == "k"


def _opt(value: str) -> str | None:
    return value or None


def _percent(value: str) -> float | None:
    return float(value) if value else None


def _devnum(major: str, minor: str) -> tuple[int, int] | None:
    if not major or int(major) < 0 or not minor or int(minor) < 0:
        return None
    return (int(major), int(minor))


_JSON_STARTS = frozenset('{}[]"')


def parse_lvs(text: str) -> tuple[LogicalVolume, ...]:
    """Parse the JSON of ``lvs --reportformat json`` asked for :data:`LVS_FIELDS`.

    LVM prints some of its messages to stdout in the middle of the report (measured, bookworm's
    lvm2, a VG whose two PVs' metadata a power cut left at different commits: a line ``Retrying
    metadata scan.`` between ``"report": [`` and its first object), so a line that no JSON
    line of the report can be -- one not starting with a bracket, a brace or a quote -- is
    dropped first."""
    text = "\n".join(line for line in text.splitlines() if line.lstrip()[:1] in _JSON_STARTS)
    try:
        rows = [row for report in json.loads(text)["report"] for row in report["lv"]]
        return tuple(
            LogicalVolume(
                vg=row["vg_name"],
                name=row["lv_name"],
                origin=_opt(row["origin"]),
                pool=_opt(row["pool_lv"]),
                segtype=row["segtype"],
                attr=row["lv_attr"],
                size=int(row["lv_size"]),
                data_percent=_percent(row["data_percent"]),
                merging=bool(row["lv_merging"]),
                path=row["lv_path"],
                dm_path=row["lv_dm_path"],
                devnum=_devnum(row["lv_kernel_major"], row["lv_kernel_minor"]),
            )
            for row in rows
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"cannot read the lvs report: {exc}") from exc


def lvs_argv(names: Iterable[str] = ()) -> list[str]:
    return [
        "lvs",
        "--reportformat",
        "json",
        "--all",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        ",".join(LVS_FIELDS),
        *names,
    ]


class Lvm:
    """Reads LVM's view through an executor (so tests can feed it recorded reports)."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def report(self, *names: str) -> tuple[LogicalVolume, ...]:
        return parse_lvs(self.executor.run(lvs_argv(names)).stdout)

    def get(self, vg: str, name: str) -> LogicalVolume | None:
        """The LV ``vg/name`` (also when hidden while merging), or None if there is none."""
        try:
            volumes = self.report(vg)
        except CommandError:
            return None
        for lv in volumes:
            if lv.name in (name, f"[{name}]"):
                return lv
        return None

    def by_devnum(self, devnum: tuple[int, int]) -> LogicalVolume | None:
        """The active LV whose device is ``devnum``, or None if it is not an LV."""
        try:
            volumes = self.report()
        except CommandError:  # no LVM on this machine, or no VG
            return None
        return next((lv for lv in volumes if lv.devnum == devnum), None)


__all__ = ["LVS_FIELDS", "LogicalVolume", "Lvm", "lvs_argv", "parse_lvs"]
