"""The ``zfs`` and ``zpool`` commands, read into typed values.

Every name handed to them is validated first (:func:`snapkit.validate.zfs_dataset`), and every
read uses ``-H -p`` (tab-separated, exact numbers), so nothing here parses a human's table.
"""

from __future__ import annotations

from dataclasses import dataclass

from snapkit.run import Executor

SNAP_FIELDS = ("name", "createtxg", "used", "referenced")


@dataclass(frozen=True)
class Snap:
    """One snapshot as ``zfs list`` shows it: ``createtxg`` orders snapshots by age."""

    name: str  # DATASET@NAME
    createtxg: int
    used: int
    referenced: int

    @property
    def short(self) -> str:
        return self.name.partition("@")[2]


def _parse(text: str) -> list[Snap]:
    found = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) == len(SNAP_FIELDS) and all(f.isdigit() for f in fields[1:]):
            found.append(Snap(fields[0], int(fields[1]), int(fields[2]), int(fields[3])))
    return found


def snapshots(run: Executor, dataset: str) -> list[Snap]:
    """The dataset's own snapshots (not its children's), oldest first."""
    argv = ["zfs", "list", "-H", "-p", "-t", "snapshot", "-d", "1", "-s", "createtxg"]
    out = run.run([*argv, "-o", ",".join(SNAP_FIELDS), dataset]).stdout
    return sorted((s for s in _parse(out) if s.name.startswith(dataset + "@")), key=_txg)


def _txg(snap: Snap) -> int:
    return snap.createtxg


def snapshot(run: Executor, full: str) -> Snap | None:
    """``DATASET@NAME``, or None if there is no such snapshot (or no such dataset)."""
    argv = ["zfs", "list", "-H", "-p", "-t", "snapshot", "-o", ",".join(SNAP_FIELDS), full]
    result = run.run(argv, check=False)
    found = _parse(result.stdout) if result.ok else []
    return found[0] if found else None


def dataset_exists(run: Executor, dataset: str) -> bool:
    return run.run(["zfs", "list", "-H", "-o", "name", dataset], check=False).ok


def pool_imported(run: Executor, dataset: str) -> bool:
    """Whether the dataset's pool is imported (a pool on a file is not, after a reboot)."""
    pool = dataset.split("/", 1)[0]
    return run.run(["zpool", "list", "-H", "-o", "name", pool], check=False).ok


def later(run: Executor, full: str) -> list[Snap]:
    """The dataset's snapshots taken after ``full``: what ``zfs rollback -r`` destroys."""
    dataset = full.partition("@")[0]
    mine = snapshot(run, full)
    if mine is None:
        return []
    return [s for s in snapshots(run, dataset) if s.createtxg > mine.createtxg]


__all__ = ["Snap", "dataset_exists", "later", "pool_imported", "snapshot", "snapshots"]
