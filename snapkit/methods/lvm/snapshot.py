"""``lvm``: a classic LVM snapshot (``lvcreate -s``), merged with ``lvconvert --merge``.

A deferred merge. ``lvconvert --merge`` of a snapshot whose origin is open (mounted) only marks
the merge; LVM starts it at the origin's next activation ("Delaying merge since origin is open").
snapkit never unmounts the user's filesystem to get there. It schedules the merge and says
exactly what is needed (on stderr, and in the plan's step):

1. ``snapkit snapshot merge NAME`` with the origin mounted: LVM schedules the merge and owns it
   from then on; snapkit prints ``umount MP, then run 'lvchange --refresh VG/LV'``;
2. the user unmounts;
3. ``lvchange --refresh VG/LV`` starts the merge and waits for it (without lvmpolld, LVM polls
   in the foreground); ``lvchange -an`` then ``-ay`` does the same. If snapkit still holds a
   record of the snapshot (Python API callers), ``plan_merge`` of a merging snapshot runs that
   refresh itself.

Interrupted create. ``lvcreate`` suspends the origin inside its run. Killing it there (what
the executor does to a child on SIGINT, SIGTERM and timeouts) was measured on 6.1 to leave
LVM's metadata half written (``s1 -wi-XX--X-``, "Cannot find matching striped segment"), the
undo's ``lvremove`` failing ("Failed to resume lv"), and the next ``lvcreate`` leaving the
origin suspended for good. So ``lvcreate`` runs to its end in a worker thread while snapkit
takes the signal (it lasts about a second), and only then is the create undone: the undo
always runs, even for a step that was under way, resuming the origin if it is suspended and
removing the snapshot if LVM has it. A SIGKILL of snapkit cannot reach ``lvcreate`` (its own
session): it finishes, and leaves a snapshot LV recorded as ``pending create`` (saved before
lvcreate ran), which ``snapkit recover`` keeps (snapkit/methods/lvm/recover.py).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from snapkit.dm.status import SnapshotFailure, explain
from snapkit.errors import CommandError, OperationError, RefusedError, UsageError
from snapkit.host.freezing import guard_suspend
from snapkit.host.lvm import LogicalVolume, Lvm
from snapkit.methods.base import FrozenCreate
from snapkit.model import CreateRequest, Pending, SnapshotRecord, SnapshotStatus, State, Target
from snapkit.plan import Plan, Step
from snapkit.run import DEFAULT_TIMEOUT, Executor
from snapkit.validate import SECTOR, lv_name

if TYPE_CHECKING:  # only annotations need it: keeps the import graph one-way
    from snapkit.methods.base import Host

log = logging.getLogger(__name__)

MIN_COW = 16 << 20
DEFAULT_COW_FRACTION = 5  # a fifth of the origin unless --cow-size says otherwise
MERGE_TIMEOUT = None  # a merge copies the whole COW back: as long as it takes


class LvmMethod:
    name: ClassVar[str] = "lvm"
    # Saved as 'pending create' before lvcreate runs: a SIGKILL or power cut after it would
    # otherwise leave an LV no record names (snapkit/methods/lvm/recover.py settles the mark).
    records_first: ClassVar[bool] = True

    def __init__(self, host: Host) -> None:
        self.executor: Executor = host.run
        self.lvm = Lvm(self.executor)

    # --- suitability ------------------------------------------------------------------------

    def _why_not(self, lv: LogicalVolume) -> str | None:
        if lv.is_thin:
            return f"{lv.full_name} is a thin LV: use --method lvm-thin"
        if lv.segtype not in ("linear", "striped", "mirror", "raid1", "raid5", "raid6"):
            return f"{lv.full_name} is a {lv.segtype} LV, which lvm cannot snapshot"
        return None

    def _origin(self, target: Target) -> LogicalVolume:
        lv = self.lvm.by_devnum(target.devnum)
        if lv is None:
            raise RefusedError(
                f"{target.device} is not an active logical volume",
                hint="use --method auto to pick a method that fits",
            )
        if lv.is_snapshot:
            raise RefusedError(f"{lv.full_name} is itself a snapshot", hint="snapshot its origin")
        if lv.attr[:1] == "O":
            raise RefusedError(
                f"a merge into {lv.full_name} is pending",
                hint="finish it first: 'snapkit snapshot merge NAME' after unmounting",
            )
        reason = self._why_not(lv)
        if reason:
            raise RefusedError(reason)
        return lv

    def unsuitable(self, target: Target) -> str | None:
        try:
            self._origin(target)
        except (RefusedError, OperationError) as exc:  # a failed lvs: unsuitable too
            return exc.message
        return None

    # --- create -------------------------------------------------------------------------------

    def _create_argv(self, request: CreateRequest, origin: LogicalVolume, name: str) -> list[str]:
        size = request.cow_size or max(origin.size // DEFAULT_COW_FRACTION, MIN_COW)
        size = -(-size // SECTOR) * SECTOR  # lvcreate refuses a size in bytes not whole sectors
        chunk_kib = request.chunk_sectors // 2
        return [
            "lvcreate",
            "-y",
            "-s",
            "-n",
            name,
            "-L",
            f"{size}b",
            "-c",
            f"{chunk_kib}k",
            origin.full_name,
        ]

    def _extra_create_steps(self, vg: str, name: str) -> tuple[Step, ...]:
        return ()

    def plan_create(self, request: CreateRequest) -> tuple[Plan, SnapshotRecord]:
        origin, create, record = self._create(request)
        steps = (
            *guard_suspend(request.target, (create,), request.max_freeze),
            *self._extra_create_steps(origin.vg, record.name),
        )
        return Plan(f"{self.name} snapshot of {origin.full_name} as {record.name}", steps), record

    def plan_frozen(self, request: CreateRequest) -> FrozenCreate:
        """The create of a group member whose filesystem the group has already frozen.

        ``lvcreate -s`` suspends its origin with lockfs, which on a frozen filesystem fails
        with EBUSY (measured on 6.1: "Unable to suspend", "Aborting. Manual intervention
        required."). But LVM skips its own suspend of an LV that is already suspended (it
        counts it as its critical section) and then loads the snapshot's tables and resumes
        the origin itself. So: suspend the origin without lockfs (its filesystem is frozen
        and flushed already), run lvcreate, resume the origin if lvcreate left it suspended.
        Measured in a 6.1 guest with two frozen ext4 LVs under writers: both snapshots made,
        each holding exactly the frozen contents, fsck clean; lvcreate only warns "Attempted to
        decrement suspended device counter below zero". lvm-thin does not survive this route
        (group/create.py says why)."""
        origin, create, record = self._create(request)
        dm = _dm_name(origin)
        suspend = ["dmsetup", "suspend", "--nolockfs", dm]
        hold = Step(
            f"{' '.join(suspend)} (its filesystem is frozen: lvcreate then skips its own "
            "lockfs suspend, which a frozen filesystem refuses)",
            lambda: self.executor.run(suspend),
            lambda: self.put_back_origin(dm),
            f"resume {dm} if it is still suspended",
            must_undo=True,
        )
        resume = Step(
            f"resume {dm} if lvcreate left it suspended", lambda: self.put_back_origin(dm)
        )
        steps = (hold, create, resume, *self._extra_create_steps(origin.vg, record.name))
        return FrozenCreate(steps, record, (dm,))

    def _create(self, request: CreateRequest) -> tuple[LogicalVolume, Step, SnapshotRecord]:
        origin = self._origin(request.target)
        name = lv_name(request.name)
        if self.lvm.get(origin.vg, name) is not None:
            raise RefusedError(f"{origin.vg}/{name} exists", hint="choose another name")
        argv = self._create_argv(request, origin, name)
        create = Step(
            " ".join(argv),
            lambda: self._to_the_end(argv),
            lambda: self.undo_create(origin, name),
            f"drop {origin.full_name}'s inactive table, resume it if suspended; lvremove -f "
            f"{origin.vg}/{name} if it exists; remove its unopened devices",
            must_undo=True,
        )
        record = SnapshotRecord(
            name=name,
            method=self.name,
            origin=str(request.target.device),
            device=f"/dev/mapper/{_mangle(origin.vg)}-{_mangle(name)}",
            created_at=time.time(),
            details={
                "vg": origin.vg,
                "lv": name,
                "origin_lv": origin.name,
                "origin_dm": _dm_name(origin),
                "mountpoint": str(request.target.mountpoint or ""),
                "fstype": request.target.fstype or "",
            },
        )
        return origin, create, record

    def _to_the_end(
        self,
        argv: list[str],
        *,
        safe: Callable[[], bool] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        """Run ``argv`` in a worker thread and wait for it even if snapkit is interrupted
        meanwhile (signals are taken by the main thread only); the first interruption is
        raised once the command has ended, so the plan then undoes a finished command -- or,
        for a command that polls a merge for as long as it takes, as soon as ``safe()`` says
        its tables are in place: the kernel merges on, and ``merge`` again finishes it."""
        failed: list[BaseException] = []
        done = threading.Event()

        def work() -> None:
            try:
                self.executor.run(argv, timeout=timeout)
            except BaseException as exc:  # handed to the main thread
                failed.append(exc)
            finally:
                done.set()

        threading.Thread(target=work, name=argv[0], daemon=True).start()
        interrupted: BaseException | None = None
        # Not Thread.join: a signal handler raising inside join() makes Python 3.11 mark the
        # thread stopped while it still runs (threading.py, _wait_for_tstate_lock, bpo-45274).
        while not done.is_set():
            try:
                if interrupted is not None and safe is not None and safe():
                    break
                time.sleep(0.05)
            except BaseException as exc:  # SIGINT/SIGTERM from the plan's guard: finish first
                interrupted = interrupted or exc
                log.warning("interrupted; letting %s finish before undoing it", argv[0])
        if interrupted is not None:
            raise interrupted
        if failed:
            raise failed[0]

    def undo_create(self, origin: LogicalVolume, name: str) -> None:
        """Put back what a killed ``lvcreate -s`` left. It preloads the new tables -- the
        origin's ``snapshot-origin`` as its *inactive* table, over a ``-real`` device that has
        no live table until lvcreate resumes it -- and then suspends the origin. A plain
        resume would swap that table in, and every I/O to the origin would fail (EIO). So:
        drop the origin's inactive table and resume it; if lvcreate was cut short there, remove
        the half-made devices first (LVM's own lvremove trips over them); then lvremove what
        LVM recorded. Only unopened devices are removed: ``-real`` may serve another snapshot
        of the same origin."""
        dm = _dm_name(origin)
        if self.put_back_origin(dm):
            self._remove_unopened(dm, name, origin.vg)
        if self.lvm.get(origin.vg, name) is not None:
            self.executor.run(["lvremove", "-f", "-y", f"{origin.vg}/{name}"])
        self._remove_unopened(dm, name, origin.vg)

    def put_back_origin(self, dm: str) -> bool:
        """Drop ``dm``'s inactive table and resume it, if either is there (what a cut-short
        lvcreate, or a group's own suspend, leaves). True if there was something to put back."""
        info = self.executor.run(
            ["dmsetup", "info", "-c", "--noheadings", "-o", "suspended,tables_loaded", dm],
            check=False,
        )
        suspended, _, tables = info.stdout.strip().partition(":")
        cut_short = info.ok and (suspended == "Suspended" or tables in ("Inactive", "Both"))
        if cut_short and tables in ("Inactive", "Both"):
            self.executor.run(["dmsetup", "clear", dm])
        if cut_short and suspended == "Suspended":
            self.executor.run(["dmsetup", "resume", dm])
        return cut_short

    def _remove_unopened(self, origin_dm: str, name: str, vg: str) -> None:
        snap = f"{_mangle(vg)}-{_mangle(name)}"
        for leftover in (snap, f"{origin_dm}-real", f"{snap}-cow"):  # users before what they use
            opened = self.executor.run(
                ["dmsetup", "info", "-c", "--noheadings", "-o", "open", leftover], check=False
            )
            if opened.ok and opened.stdout.strip() == "0":
                self.executor.run(["dmsetup", "remove", leftover], check=False)

    # --- status, merge, discard ---------------------------------------------------------------

    def _snapshot(self, record: SnapshotRecord) -> LogicalVolume | None:
        return self.lvm.get(record.details["vg"], record.details["lv"])

    def _resume_hint(self, record: SnapshotRecord) -> str:
        where = record.details.get("mountpoint") or record.origin
        origin = f"{record.details['vg']}/{record.details['origin_lv']}"
        return f"umount {where}, then run 'lvchange --refresh {origin}' to start it"

    def status(self, record: SnapshotRecord) -> SnapshotStatus:
        lv = self._snapshot(record)
        pending = record.pending
        if lv is None and pending in (Pending.MERGE, Pending.DISCARD):
            return SnapshotStatus(record, State.MERGED, None, 100.0, f"{pending} done")
        if lv is None:
            return SnapshotStatus(record, State.INVALID, None, None, _gone(record.name))
        if pending in (Pending.MERGE, Pending.DISCARD) and not (
            lv.is_snapshot or lv.is_thin_snapshot
        ):
            # Seen after power cuts in LVM's own clean-up of a merge and of an lvremove: the
            # snapshot's name comes back as a plain LV holding the old COW. The verb was
            # done (the origin merged, or kept); the leftover is recover's to remove.
            return SnapshotStatus(
                record,
                State.MERGED,
                None,
                100.0,
                f"{pending} done; LVM's clean-up was cut short and left {lv.full_name}, no "
                "longer a snapshot (the old COW): 'snapkit recover' removes it",
            )
        usage = lv.data_percent
        if _merge_failed(lv):
            return SnapshotStatus(record, State.INVALID, usage, None, self._failed_words(record))
        if lv.merging:
            origin = self.lvm.get(lv.vg, lv.origin or record.details["origin_lv"])
            held = origin is not None and origin.is_open
            message = "merge pending: " + self._resume_hint(record) if held else "merging"
            progress = None if usage is None else 100.0 - usage
            return SnapshotStatus(record, State.MERGING, usage, progress, message)
        if lv.invalid:
            words = explain(SnapshotFailure.INVALID, record.name)
            return SnapshotStatus(record, State.INVALID, usage, None, words)
        return SnapshotStatus(record, State.ACTIVE, usage, None)

    def plan_merge(self, record: SnapshotRecord) -> Plan:
        lv = self._snapshot(record)
        vg = record.details["vg"]
        if lv is None:
            raise RefusedError(f"{vg}/{record.details['lv']} does not exist: {_gone(record.name)}")
        origin = self.lvm.get(vg, lv.origin or record.details["origin_lv"])
        if origin is None:
            raise RefusedError(f"the origin of {lv.full_name} is gone")
        title = f"merge {lv.full_name} into {origin.full_name}"
        if _merge_failed(lv) and not origin.is_open:
            return Plan(title, self._restart_steps(record, origin))
        if lv.merging:
            if origin.is_open:
                raise RefusedError(
                    f"the merge of {record.name} is scheduled, but {origin.full_name} is open",
                    hint=self._resume_hint(record),
                )
            refresh = ["lvchange", "--refresh", origin.full_name]
            start = Step(
                " ".join(refresh) + " (starts the merge, waits for it)",
                lambda: self._merging(refresh, record),
            )
            return Plan(title, (start,))
        argv = self._merge_argv(lv)
        if origin.is_open:
            hint = self._resume_hint(record)

            def schedule() -> None:
                self._to_the_end(argv)
                # Said to the user, not logged: it is the one thing they must do next.
                print(
                    f"snapkit: merge of {record.name} deferred, {origin.name} is open: {hint}",
                    file=sys.stderr,
                )

            return Plan(
                title, (Step(f"{' '.join(argv)} (deferred: origin open; {hint})", schedule),)
            )
        return Plan(title, (Step(" ".join(argv), lambda: self._merging(argv, record)),))

    def _failed_words(self, record: SnapshotRecord) -> str:
        return explain(
            SnapshotFailure.MERGE_FAILED, record.name, f"snapkit snapshot merge {record.name}"
        )

    def _merging(self, argv: list[str], record: SnapshotRecord) -> None:
        """Run a command that merges and polls until done; a "Merge failed" from LVM (the
        kernel's status word, measured: lvconvert exits 5 with "vg/lv: Merge failed. Retry
        merge or inspect manually." among lvmpolld warnings) becomes snapkit's one line."""
        try:
            self._to_the_end(argv, safe=lambda: self._merge_running(record), timeout=MERGE_TIMEOUT)
        except CommandError as exc:
            if "Merge failed" in exc.stderr:
                raise OperationError(self._failed_words(record)) from None
            raise

    def _merge_running(self, record: SnapshotRecord) -> bool:
        """The origin runs ``snapshot-merge`` and no device of its VG is suspended: the part
        of lvconvert that must not be killed is over."""
        origin = record.details["origin_dm"]
        table = self.executor.run(["dmsetup", "table", origin], check=False).stdout
        info = self.executor.run(
            ["dmsetup", "info", "-c", "--noheadings", "-o", "name,suspended"], check=False
        ).stdout
        prefix = _mangle(record.details["vg"]) + "-"
        suspended = [ln for ln in info.splitlines() if ln.startswith(prefix) and "Suspended" in ln]
        return " snapshot-merge " in table and not suspended

    def _restart_steps(self, record: SnapshotRecord, origin: LogicalVolume) -> tuple[Step, ...]:
        """Measured on 6.1: after "Merge failed", ``lvchange --refresh`` leaves it failed (the
        kernel refuses to reload the same snapshot-merge); deactivating the origin drops the
        stopped target, and activating it loads a fresh one, which merges from what the COW
        holds on disk and polls until done."""
        down = ["lvchange", "-an", origin.full_name]
        up = ["lvchange", "-ay", origin.full_name]
        return (
            Step(" ".join(down) + " (drops the failed merge)", lambda: self._to_the_end(down)),
            Step(" ".join(up) + " (merges again, waits for it)", lambda: self._merging(up, record)),
        )

    def plan_extend(self, record: SnapshotRecord, by_bytes: int) -> Plan:
        """``lvextend -L +SIZE``: LVM grows the -cow LV and reloads the snapshot itself."""
        full = f"{record.details['vg']}/{record.details['lv']}"
        argv = ["lvextend", "-q", "-L", f"+{by_bytes}b", full]
        return Plan(
            f"grow the COW of {full}", (Step(" ".join(argv), lambda: self.executor.run(argv)),)
        )

    def _merge_argv(self, lv: LogicalVolume) -> list[str]:
        return ["lvconvert", "--merge", "--interval", "1", lv.full_name]

    def plan_discard(self, record: SnapshotRecord, *, force: bool = False) -> Plan:
        lv = self._snapshot(record)
        full = f"{record.details['vg']}/{record.details['lv']}"
        if lv is None:
            if force:
                return Plan(f"discard {full} (already gone)", ())
            raise RefusedError(f"{full} does not exist", hint="--force forgets the record")
        if lv.merging:
            failed = _merge_failed(lv)
            raise RefusedError(
                f"{full} is merging into its origin and cannot be discarded",
                hint=self._failed_words(record) if failed else self._resume_hint(record),
            )
        argv = ["lvremove", "-f", "-y", full]
        return Plan(f"discard {full}", (Step(" ".join(argv), lambda: self.executor.run(argv)),))


def _gone(name: str) -> str:
    """An *unmarked* record whose LV is gone. A merge interrupted once LVM had started it is
    finished by lvconvert on its own (measured), but its record is marked (saved before
    lvconvert runs) and reads "merge done" instead; this is left for an LV removed outside
    snapkit, or a record written before merges were marked."""
    return (
        "the snapshot LV is gone: LVM merged it (a merge interrupted after it started still "
        f"completes) or it was removed outside snapkit; 'snapkit snapshot discard {name} "
        "--force' forgets it"
    )


def _merge_failed(lv: LogicalVolume) -> bool:
    """lv_attr's 5th letter ``m``: the kernel stopped this snapshot's merge on an error."""
    return lv.attr[4:5] == "m"


def _mangle(name: str) -> str:
    """LVM's dm names double every hyphen inside a VG or LV name (``my-vg`` -> ``my--vg``)."""
    return name.replace("-", "--")


def _dm_name(lv: LogicalVolume) -> str:
    """``/dev/mapper/vg-lv`` -> ``vg-lv`` (LVM doubles hyphens inside names)."""
    return lv.dm_path.rsplit("/", 1)[-1]


def refuse_size(request: CreateRequest, method: str) -> None:
    if request.cow_size is not None:
        raise UsageError(f"{method} takes no --cow-size", hint="thin snapshots share the pool")


__all__ = ["LvmMethod", "refuse_size"]
