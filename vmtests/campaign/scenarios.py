"""The campaign matrix as data: filesystems x methods x workloads, plus the negative controls.

A scenario's id is readable and stable (``ext4-lvm-writer``, ``control-dd-copy-ext4-writer``),
its default seed is derived from the id (so a run replays exactly unless a seed is given), and
the shard a scenario falls in depends only on the sorted ids, so every CI shard agrees.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# ext4, xfs and btrfs carry every row; the others (issue 14) carry the method rows only, since
# the controls and the crypt stack test the oracle and the stacking, not the filesystem.
CORE_FILESYSTEMS = ("ext4", "xfs", "btrfs")
# The filesystems on a block device: every block method takes these. ZFS has no block device
# under its mount (its pool is), so it takes only its own snapshots.
BLOCK_FILESYSTEMS = (*CORE_FILESYSTEMS, "ext3", "ext2", "reiserfs", "f2fs", "jfs")
FILESYSTEMS = (*BLOCK_FILESYSTEMS, "zfs")
# The Debian kernel flavour a filesystem needs: the cloud flavour (the default: it boots
# fastest) has no reiserfs, f2fs or jfs module, the generic one has them. Such a row boots the
# generic flavour of the run's Debian kernel (campaign_kernels.row_spec), whose layer is built
# the first time a row needs it, so a run without these rows never builds it.
FS_FLAVOUR = {"reiserfs": "generic", "f2fs": "generic", "jfs": "generic"}
# The matrix's method names; ``freeze-lvm`` is snapkit's ``freeze`` method wrapping an LVM
# snapshot, ``btrfs-native`` is snapkit's ``btrfs`` method and exists only on btrfs, and
# ``zfs-native`` is snapkit's ``zfs`` method and exists only on zfs.
METHODS = (
    "lvm",
    "lvm-thin",
    "dm",
    "dm-direct",
    "freeze-lvm",
    "remount-ro",
    "btrfs-native",
    "zfs-native",
    "lvm-plain",
)
SNAPKIT_METHOD = {"freeze-lvm": "freeze", "btrfs-native": "btrfs", "zfs-native": "zfs"}
# ``lvm-plain`` is the question's first answer exactly: ``lvcreate -s`` of the mounted LV, no
# snapkit (so no FIFREEZE of its own for btrfs), for claim 2 ("ReiserFS probably also", btrfs
# "probably does as well"). On the filesystems that claim names, with the writer and churn;
# its snapshot is LVM's, outside snapkit's records, so the row merges nothing. btrfs is the
# control ``lvm-plain`` instead: a dm suspend does not freeze it on 6.1, and the first plain
# rows lost 19 and 22 acknowledged writes, so the oracle must catch it (snapkit FIFREEZEs it).
PLAIN_FILESYSTEMS = ("ext3", "ext4", "reiserfs")
WITHOUT_SNAPKIT = ("lvm-plain",)  # methods whose snapshot snapkit does not take
PLAIN_WORKLOADS = ("writer", "churn")
# A method that exists on one filesystem only, and that filesystem's only method.
NATIVE = {"btrfs-native": "btrfs", "zfs-native": "zfs"}
WORKLOADS = (
    "writer",
    "churn",
    "mmap",
    "fio",
    "mixed",
    "sqlite",
    "sqlite-off",
    "sqlite-pre",
    "desktop",
)
# The database's two variants (claim 11), on the core filesystems only: ``sqlite-off`` commits
# with synchronous=OFF (COMMIT returns before anything is fsync'd: the case that may lose
# acknowledged commits), ``sqlite-pre`` is the FULL database snapshotted by ``snapkit snapshot
# create --pre`` with a hook that checkpoints the WAL into the database file first. The
# campaign's freeze-lvm row runs the ``snapkit freeze`` verb, which takes no hooks, so
# sqlite-pre rows are the lvm and dm ones (the question's LVM answer and its raw dm recipe).
DB_VARIANTS = ("sqlite-off", "sqlite-pre")
PRE_HOOK_METHODS = ("lvm", "dm")
# ``desktop`` is claim 6's probe: files held open for writing as a desktop holds them (an open
# database committing, beside the writers), under remount-ro only, on the core filesystems. The
# guest counts how many of its remount tries are refused (EBUSY); a row refused every time is
# ``refused`` with those figures, which CLAIMS.md cites.
PROBES = {"desktop": "remount-ro"}
CONTROLS = (
    "dd-copy",
    "dm-nolockfs",
    "corrupt",
    "lvm-under-crypt",
    "drop-wal",
    "discard-mounted",
    "jfs-freeze",
    "lvm-plain",
)
# The layers a filesystem can sit on above the method's device (issue 19): "crypt" is a dm-crypt
# mapping over the LV or prepared device, as an encrypted /home is. Rows for the block methods.
STACKS = ("crypt",)
STACKED_METHODS = ("lvm", "lvm-thin", "dm")
# lvm-under-crypt is `lvcreate -s` of the LV under dm-crypt without snapkit: LVM's suspend finds
# no filesystem on the LV and freezes nothing. Measured on ext4 (its journal needs recovery,
# which the oracle's `clean` check sees); xfs and btrfs replay to a crash-consistent state.
# drop-wal is a properly frozen copy of a SQLite database in WAL mode, without its -wal file,
# as a file-level backup that copies only *.sqlite makes it: the commits still in the WAL are
# gone, which the SQLite oracle must see. It needs the sqlite workload; one filesystem is enough.
# discard-mounted is the raw dm recipe's discard done while the filesystem is still mounted,
# which the question's answer says "will likely corrupt": the origin's `snapshot` table (new
# writes in the COW) swapped back to `linear` under the mounted filesystem (claim 9).
# jfs-freeze is a plain FIFREEZE copy of a JFS (fsfreeze, dd, thaw, no snapkit): its
# allocation maps are stale while it says clean, so fsck must catch it every time. It is why
# snapkit refuses to freeze JFS (snapkit/host/fs.py FREEZE_INCONSISTENT): the jfs rows of the
# freezing methods are ``refused`` by snapkit, and only remount-ro takes JFS.
CONTROL_FILESYSTEMS = {
    "lvm-under-crypt": ("ext4",),
    "drop-wal": ("ext4",),
    "discard-mounted": ("ext4",),
    "jfs-freeze": ("jfs",),
    "lvm-plain": ("btrfs",),
}
CONTROL_WORKLOAD = {"drop-wal": "sqlite"}  # the workload a control runs (default: writer)
# remount-ro refuses (EBUSY) while a file is open for writing, by design (snapkit/methods/
# remount.py): mmap keeps a writable mapping, fio keeps its files open for the whole run, and
# a database keeps its file and its WAL open.
HELD_OPEN = ("mmap", "fio", "mixed", "sqlite", *DB_VARIANTS, "desktop")
CONTROL_ATTEMPTS = 3  # a control that is consistent by luck is retried up to this bound
MATRICES = ("quick", "full")
# Snapshot groups (issue 15): the members' filesystems, "+"-joined, one origin each; the methods
# that take a group (lvm-thin and btrfs-native refuse one: snapkit/methods/group/create.py).
# A dm suspend does not freeze btrfs, so btrfs joins only the freeze group of three.
GROUP_METHODS = ("dm", "dm-direct", "lvm", "freeze-lvm")
GROUPS = {m: ("ext4+xfs", "ext4+xfs+ext4") for m in GROUP_METHODS} | {
    "freeze-lvm": ("ext4+xfs", "ext4+xfs+btrfs")
}


@dataclass(frozen=True, order=True)
class Scenario:
    fs: str
    method: str  # a METHODS name, or "none" for controls
    workload: str
    control: str = ""  # a CONTROLS name for a negative control
    seed: int | None = None  # None: derived from the id
    stack: str = ""  # a STACKS name: the layer between the filesystem and the method's device
    group: str = ""  # a snapshot group's members' filesystems, "+"-joined (fs is the first)

    def __post_init__(self) -> None:
        if self.fs not in FILESYSTEMS:
            raise ValueError(f"unknown filesystem {self.fs!r}")
        if self.workload not in WORKLOADS:
            raise ValueError(f"unknown workload {self.workload!r}")
        if self.control:
            if self.control not in CONTROLS or self.method != "none":
                raise ValueError(f"control {self.control!r} takes method 'none'")
            if self.fs not in BLOCK_FILESYSTEMS:
                raise ValueError(
                    f"control {self.control!r} copies a block device: {self.fs} has none"
                )
        elif self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}")
        elif self.method in NATIVE and self.fs != NATIVE[self.method]:
            raise ValueError(f"{self.method} snapshots exist only on {NATIVE[self.method]}")
        elif self.fs not in BLOCK_FILESYSTEMS and self.method != "zfs-native":
            raise ValueError(f"{self.fs} has no block device: only its native method takes it")
        elif self.method == "lvm-plain" and (
            self.fs not in PLAIN_FILESYSTEMS or self.workload not in PLAIN_WORKLOADS or self.stack
        ):
            raise ValueError("lvm-plain runs claim 2's filesystems with the writer and churn only")
        if self.workload in DB_VARIANTS and (self.fs not in CORE_FILESYSTEMS or self.stack):
            raise ValueError(f"{self.workload} runs on {', '.join(CORE_FILESYSTEMS)}, unstacked")
        if self.workload == "sqlite-pre" and self.method not in PRE_HOOK_METHODS:
            raise ValueError(f"sqlite-pre runs with {' and '.join(PRE_HOOK_METHODS)} only")
        if self.control and self.workload != CONTROL_WORKLOAD.get(self.control, "writer"):
            raise ValueError(f"control {self.control!r} runs the {self.workload!r} workload")
        if self.control and self.fs not in CONTROL_FILESYSTEMS.get(self.control, CORE_FILESYSTEMS):
            raise ValueError(f"control {self.control!r} does not run on {self.fs}")
        elif self.workload in PROBES and (
            self.method != PROBES[self.workload] or self.fs not in CORE_FILESYSTEMS or self.stack
        ):
            raise ValueError(f"{self.workload} probes {PROBES[self.workload]} on the core fs only")
        elif (
            self.method == "remount-ro"
            and self.workload in HELD_OPEN
            and PROBES.get(self.workload) != self.method
        ):
            raise ValueError(f"remount-ro cannot snapshot while {self.workload} holds files open")
        if self.stack and (self.stack not in STACKS or self.method not in STACKED_METHODS):
            raise ValueError(f"stack {self.stack!r} takes one of {', '.join(STACKED_METHODS)}")
        if self.stack and self.fs not in CORE_FILESYSTEMS:
            raise ValueError(f"stack {self.stack!r} runs on {', '.join(CORE_FILESYSTEMS)}")
        members = self.group.split("+") if self.group else []
        if self.group and (
            self.method not in GROUP_METHODS
            or not 2 <= len(members) <= 3
            or members[0] != self.fs
            or any(m not in FILESYSTEMS for m in members)
            or self.stack
            or self.control
        ):
            raise ValueError(f"group {self.group!r} of {self.method!r} is not a group row")

    @property
    def id(self) -> str:
        if self.control:
            return f"control-{self.control}-{self.fs}-{self.workload}"
        if self.stack:
            return f"{self.fs}-{self.stack}-{self.method}-{self.workload}"
        if self.group:
            return f"group-{self.group}-{self.method}-{self.workload}"
        return f"{self.fs}-{self.method}-{self.workload}"

    @property
    def is_control(self) -> bool:
        return bool(self.control)

    @property
    def effective_seed(self) -> int:
        return self.seed if self.seed is not None else zlib.crc32(self.id.encode()) & 0xFFFFF

    @property
    def snapkit_method(self) -> str:
        return SNAPKIT_METHOD.get(self.method, self.method)

    @property
    def flavour(self) -> str:
        """The Debian kernel flavour this row needs ("": whatever the run boots)."""
        return FS_FLAVOUR.get(self.fs, "")

    @property
    def attempts(self) -> int:
        return CONTROL_ATTEMPTS if self.control else 1

    def with_seed(self, seed: int | None) -> Scenario:
        return dataclasses.replace(self, seed=seed)

    def guest_spec(self) -> dict[str, Any]:
        """What the guest runner (vmtests/guest/campaign/scenario.py) is told: plain JSON values."""
        return {
            "id": self.id,
            "fs": self.fs,
            "method": self.method,
            "snapkit_method": self.snapkit_method,
            "workload": self.workload,
            "control": self.control,
            "seed": self.effective_seed,
            "attempts": self.attempts,
            "stack": self.stack,
            "group": self.group,
        }


def full() -> list[Scenario]:
    real = [
        Scenario(fs, m, w)
        for fs in FILESYSTEMS
        for m in METHODS
        for w in WORKLOADS
        if (NATIVE.get(m, fs) == fs)
        and (fs in BLOCK_FILESYSTEMS or m in NATIVE)
        and (m != "remount-ro" or w not in HELD_OPEN or PROBES.get(w) == m)
        and (w not in PROBES or (PROBES[w] == m and fs in CORE_FILESYSTEMS))
        and (w not in DB_VARIANTS or fs in CORE_FILESYSTEMS)
        and (w != "sqlite-pre" or m in PRE_HOOK_METHODS)
        and (m != "lvm-plain" or (fs in PLAIN_FILESYSTEMS and w in PLAIN_WORKLOADS))
    ]
    stacked = [
        Scenario(fs, m, "writer", stack=st)
        for st in STACKS
        for fs in CORE_FILESYSTEMS
        for m in STACKED_METHODS
    ]
    controls = [
        Scenario(fs, "none", CONTROL_WORKLOAD.get(c, "writer"), c)
        for c in CONTROLS
        for fs in CONTROL_FILESYSTEMS.get(c, CORE_FILESYSTEMS)
    ]
    groups = [
        Scenario(g.split("+")[0], m, "writer", group=g) for m in GROUP_METHODS for g in GROUPS[m]
    ]
    groups.append(Scenario("ext4", "freeze-lvm", "churn", group="ext4+xfs"))  # quick's row
    return sorted(real + stacked + controls + groups, key=lambda s: s.id)


QUICK_IDS = (
    "ext4-lvm-mixed",
    "ext3-lvm-fio",
    "btrfs-lvm-thin-churn",
    "ext4-crypt-dm-writer",
    "ext2-dm-direct-mmap",
    "btrfs-btrfs-native-writer",
    "zfs-zfs-native-writer",
    "group-ext4+xfs-freeze-lvm-churn",
    "xfs-remount-ro-writer",
    "control-lvm-under-crypt-ext4-writer",
    "control-dd-copy-ext4-writer",
    "control-dm-nolockfs-xfs-writer",
    "control-corrupt-btrfs-writer",
    "control-drop-wal-ext4-sqlite",
    "control-discard-mounted-ext4-writer",
    "control-lvm-plain-btrfs-writer",
)


def quick() -> list[Scenario]:
    """At most 16: every filesystem the default kernel flavour mounts, every method, every
    workload's parts (mixed runs the database too) and every control once (but jfs-freeze,
    whose JFS needs the generic flavour), the encrypted
    desktop's stack (ext4 on dm-crypt over a prepared device), and a snapshot group
    (freeze-lvm's row: ext4 and xfs frozen together, one command copying both). No row that
    needs another kernel flavour: the quick matrix builds no second kernel."""
    by_id = {s.id: s for s in full()}
    return [by_id[i] for i in QUICK_IDS]


def matrix(name: str) -> list[Scenario]:
    if name == "quick":
        return quick()
    if name == "full":
        return full()
    raise ValueError(f"unknown matrix {name!r}: choose {' or '.join(MATRICES)}")


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' (1 <= K <= N) -> (K, N)."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"shard {text!r}: expected K/N, e.g. 2/4") from None
    if not 1 <= k <= n:
        raise ValueError(f"shard {text!r}: K must be between 1 and N")
    return k, n


def shard(scenarios: Iterable[Scenario], k: int, n: int) -> list[Scenario]:
    """The K-th of N deterministic slices: round-robin over the scenarios sorted by id."""
    ordered = sorted(scenarios, key=lambda s: s.id)
    return [s for i, s in enumerate(ordered) if i % n == k - 1]


def select(
    name: str,
    *,
    ids: Sequence[str] = (),
    seed: int | None = None,
    shard_spec: str | None = None,
) -> list[Scenario]:
    """The scenarios a run executes: a matrix, or the named ids (from the full matrix)."""
    if ids:
        by_id = {s.id: s for s in full()}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise ValueError(f"unknown scenario id(s): {', '.join(unknown)}")
        chosen = [by_id[i] for i in ids]
    else:
        chosen = matrix(name)
    if shard_spec:
        chosen = shard(chosen, *parse_shard(shard_spec))
    return [s.with_seed(seed) for s in chosen] if seed is not None else chosen
