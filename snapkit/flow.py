"""The shared flow of every method: resolve, validate, lock, hooks, plan, apply, record.

Methods only build plans; this module decides *when* they run, so every method gets the same
guarantees: refusals before anything changes, one lock per origin, ``--pre`` before and
``--post`` after (even on failure), ``--dry-run`` printing exactly what would run, and the state
file updated only for what really happened.

Merges and discards that hand work to the kernel (:class:`~snapkit.methods.base.KernelMerge`)
run in two plans: the start, which can be rolled back, and -- once the kernel reports the merge
done -- the finish. The record is saved as *pending* in between, so an interrupted or
backgrounded merge is finished by running ``merge --wait`` (or ``discard``) again.

Test hook: ``SNAPKIT_TEST_PAUSE_AT=[P:]N`` makes the P-th plan a command applies (default 1)
stop before its step N (1-based, as ``--dry-run`` numbers them; N = steps + 1: after the
last step, before the flow records what the plan did), print
``snapkit: test pause before step N`` on stderr and sleep, so a test can send SIGINT or SIGTERM
at that exact point. It is read only here and changes nothing else.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from snapkit import recover
from snapkit.dm.control import IoctlDm
from snapkit.dm.naming import snapkit_name
from snapkit.dm.table import DevNum
from snapkit.errors import OperationError, RefusedError, SnapkitError, UsageError, split_advice
from snapkit.host import freezing
from snapkit.host.cowdir import Room, cow_room
from snapkit.host.freezing import Outcome
from snapkit.host.fs import freeze_refusal, snapshot_mount_options
from snapkit.host.loopdev import LocalFiles, LosetupLoops
from snapkit.host.target import Mount, block_devnum, mount_devnum, mounts, resolve, stable_id
from snapkit.host.watchdog import resume_guard
from snapkit.lock import origin_lock
from snapkit.methods import registry
from snapkit.methods.base import (
    Context,
    Extendable,
    ForcedMerge,
    FrozenGroupable,
    Host,
    KernelMerge,
    Method,
)
from snapkit.methods.dm import DM_METHODS, layer
from snapkit.methods.stack import BLOCK_METHODS, STACK_KEY
from snapkit.model import (
    MERGE_OR_DISCARD,
    CreateRequest,
    Group,
    GroupStatus,
    Pending,
    SnapshotRecord,
    SnapshotStatus,
    State,
    Target,
)
from snapkit.plan import Plan, PlanError, Step, apply
from snapkit.recover import Recovery
from snapkit.run import Completed, SubprocessExecutor
from snapkit.settings import Settings
from snapkit.state import Prepared, StateData, StateFile, reconcile
from snapkit.validate import format_size

if TYPE_CHECKING:  # annotations only: the module loads when its verb runs
    from snapkit.methods.dm.device import PrepareResult

PAUSE_ENV = "SNAPKIT_TEST_PAUSE_AT"
POLL_SECONDS = 0.2
Progress = Callable[[SnapshotStatus], None]


@contextmanager
def real_host() -> Iterator[Host]:
    run = SubprocessExecutor()
    with IoctlDm() as dm:
        yield Host(
            dm=dm,
            run=run,
            loops=LosetupLoops(run),
            files=LocalFiles(),
            resume_watchdog=resume_guard,
        )


@dataclass
class Flow:
    """The verbs on one host. ``settings`` is resolved once (by default from the environment)
    and names the state file and the lock directory every verb uses."""

    host: Host
    settings: Settings = field(default_factory=Settings.from_env)
    mount_table: Callable[[], tuple[Mount, ...]] = mounts  # the seam unit tests replace
    freezer: freezing.Freezer = field(default_factory=freezing.IoctlFreezer)  # groups' freeze
    watchdog: freezing.GuardMaker = freezing.real_watchdog
    _plans_applied: int = 0

    def __post_init__(self) -> None:
        self.state = StateFile(self.settings.state_dir, sync=not self.settings.unsafe_state_writes)
        self.context = Context(self.host, self.settings)

    # -- plumbing -----------------------------------------------------------------------------

    def lock(self, origin: str, operation: str) -> AbstractContextManager[Path]:
        """The origin's lock, in the one lock directory of :attr:`settings`."""
        return self.context.lock(origin, operation)

    def load(self) -> StateData:
        """The state file, with what the kernel shows under snapkit uuids added (and saved)."""
        data = self.state.load()
        rebuilt = reconcile(data, self.host.dm)
        if rebuilt != data:
            self.state.save(rebuilt)
        return rebuilt

    def record(self, name: str) -> SnapshotRecord:
        group, slash, suffix = name.partition("/")
        if slash:  # a group's member as G/SUFFIX: its record is G-SUFFIX
            name = f"{group}-{suffix}"
        found = self.load().snapshot(name)
        if found is None:
            raise RefusedError(f"no snapshot named {name!r}", hint="see 'snapkit snapshot list'")
        return found

    def method(self, name: str) -> Method:
        return registry.get(name, self.host)

    def _view(self, name: str) -> SnapshotRecord:
        """The record as mount and umount use it: for a stacked snapshot, its device is the
        top of the rebuilt stack (the plaintext crypt mapping), not the base snapshot."""
        record = self.record(name)
        if not record.details.get(STACK_KEY):
            return record
        from snapkit.methods.stack.method import shown  # only stacked records need it

        return shown(record)

    def method_of(self, record: SnapshotRecord) -> Method:
        """The method that made ``record``; for a stacked origin (a filesystem on dm-crypt
        over an LV or a prepared device), that method wrapped in its stack."""
        impl = self.method(record.method)
        if not record.details.get(STACK_KEY):
            return impl
        from snapkit.methods.stack.method import for_record  # only stacked records need it

        return for_record(impl, self.host, record)

    def _for_target(
        self, impl: Method, target: Target, *, command: bool = False, key_file: Path | None = None
    ) -> Method:
        """``impl`` for ``target``: wrapped in the device stack when the filesystem sits on
        pass-through layers (crypt, linear) over what a block-level method snapshots.
        ``key_file`` (LUKS) is only for such a stack: anywhere else it is a usage error."""
        stacked = impl.name in BLOCK_METHODS and target.device.parent == Path("/dev/mapper")
        if stacked:
            from snapkit.host.stack import resolve_stack
            from snapkit.methods.stack.method import wrap

            stack = resolve_stack(target, self.host.dm)
            kf = str(key_file or "")
            wrapped = wrap(impl, self.host, target, stack, command=command, key_file=kf)
            if wrapped is not impl or not key_file:
                return wrapped
        if key_file:
            raise UsageError(
                f"--key-file is for a filesystem on dm-crypt; {target.device} is not one",
                hint="leave out --key-file",
            )
        return impl

    def apply_plan(self, plan: Plan, timeout: float | None = None) -> None:
        self._plans_applied += 1
        apply(_with_test_pause(plan, self._plans_applied), timeout=timeout)

    # -- create -------------------------------------------------------------------------------

    def create(
        self,
        target_spec: str,
        *,
        name: str,
        method: str = registry.DEFAULT_METHOD,
        cow_size: int | None = None,
        cow_dir: Path | None = None,
        chunk_sectors: int = 8,
        pre: str | None = None,
        post: str | None = None,
        max_freeze: float = 10.0,
        dry_run: bool = False,
        command: tuple[str, ...] = (),
        key_file: Path | None = None,
        force: bool = False,
    ) -> SnapshotStatus | str:
        """Create snapshot ``name`` of ``target_spec``; the plan text instead if ``dry_run``.
        ``command`` is the user's snapshot command (freeze, remount-ro, auto's fallback);
        ``key_file`` unlocks the snapshot's LUKS header (a filesystem on dm-crypt)."""
        snapkit_name(name)
        target = resolve(target_spec)
        impl = self._for_target(
            self.method(method), target, command=bool(command), key_file=key_file
        )
        data = self.load()
        if data.snapshot(name) is not None or self.host.dm.info(name) is not None:
            raise RefusedError(f"the name {name!r} is already in use", hint="choose another --name")
        reason = impl.unsuitable(target)
        if reason is not None:
            others = ", ".join(n for n in registry.names() if n != method)
            raise RefusedError(
                f"method {method} cannot snapshot {target_spec}: {reason}",
                hint=f"fix that, or choose another --method ({others})",
            )
        if refusal := freeze_refusal(target.fstype, method, force=force):
            raise refusal
        req = CreateRequest(
            target=target,
            name=name,
            cow_size=cow_size,
            cow_dir=cow_dir or self.context.cow_dir,
            chunk_sectors=chunk_sectors,
            pre=pre,
            post=post,
            max_freeze=max_freeze,
            command=command,
            force=force,
        )
        with self.lock(str(target.device), f"create {name}"):
            plan, record = impl.plan_create(req)
            if dry_run:
                return _hooks_text(req.pre, plan.render(), req.post)
            self._hook(req.pre, "--pre")
            try:
                self._apply_create(impl, plan, record)
                record = replace(record, created_at=time.time())
                # One save. self.load() would first save the new snapshot as the kernel shows
                # it (rebuilt: no stable id of its disk), and a power cut between that save and
                # this one left the rebuilt record for recover (found by issue 17's states).
                data = reconcile(self.state.load(), self.host.dm)
                self.state.save(data.with_snapshot(record))
            finally:
                post_failed = self._hook(req.post, "--post", check=False)
            if post_failed:
                raise OperationError(f"snapshot {name} was created, but {post_failed}")
            return impl.status(record)

    def _apply_create(self, impl: Method, plan: Plan, record: SnapshotRecord) -> None:
        """Apply a create plan. A method whose COW takes the origin's *newest* writes once its
        plan switches the origin (dm-direct: ``records_first``) is recorded as ``pending
        create`` before the plan runs: a crash after the switch and before the record would
        leave a COW no record names, which recover removes as a create cut short -- and with
        it every write acknowledged since. A clean rollback takes the mark away again."""
        if not impl.records_first:
            self.apply_plan(plan)
            return
        creating = record.marked(Pending.CREATE)
        existed = self.state.path.exists()
        self.state.save(self.load().with_snapshot(creating))
        try:
            self.apply_plan(plan)
        except PlanError as exc:
            if not (exc.undo_failures or exc.skipped):
                left = self.load().without_snapshot(record.name)
                if existed or left != StateData():
                    self.state.save(left)
                else:  # a failed create changes nothing, not even a file that was not there
                    self.state.path.unlink(missing_ok=True)
            raise

    def _hook(self, command: str | None, what: str, *, check: bool = True) -> str:
        if not command:
            return ""
        result = self.host.run.run(["sh", "-c", command], check=False, timeout=None)
        if result.ok:
            return ""
        message = f"the {what} command exited {result.returncode}"
        if check:
            raise RefusedError(message, hint="nothing was changed; fix the hook and retry")
        return message

    # -- groups -------------------------------------------------------------------------------

    def create_group(
        self,
        target_specs: Sequence[str],
        *,
        name: str,
        method: str = registry.DEFAULT_METHOD,
        cow_size: int | None = None,
        cow_dir: Path | None = None,
        chunk_sectors: int = 8,
        pre: str | None = None,
        post: str | None = None,
        max_freeze: float = 10.0,
        dry_run: bool = False,
        command: tuple[str, ...] = (),
        force: bool = False,
    ) -> GroupStatus | str:
        """Create the snapshot group ``name``: one snapshot per member of ``target_specs``,
        all at one point in time, all or nothing (:mod:`snapkit.methods.group.create`).
        Every refusal comes before anything changes. The group's entry is saved, marked
        ``pending`` create with its planned members, before the plan runs; the member records
        after it: a crash in between is settled by ``recover`` (gone)."""
        from snapkit.methods.group import create as group_create

        snapkit_name(name)
        data = self.load()
        if (
            data.snapshot(name) is not None
            or data.group(name) is not None
            or self.host.dm.info(name) is not None
        ):
            raise RefusedError(f"the name {name!r} is already in use", hint="choose another --name")
        targets = [resolve(spec) for spec in target_specs]
        seen: dict[tuple[int, int], str] = {}
        for spec, target in zip(target_specs, targets, strict=True):
            if target.devnum in seen:
                raise RefusedError(
                    f"{spec} is given twice (as {seen[target.devnum]} too)",
                    hint="name each filesystem once",
                )
            seen[target.devnum] = spec
            if target.mountpoint is None:
                raise RefusedError(
                    f"{spec} is not mounted: a group member is a mounted filesystem",
                    hint=f"mount it, or leave it out of the group {name}",
                )
            for other in data.groups:
                origins = {r.origin for r in data.snapshots if r.name in other.members}
                if str(target.device) in origins:
                    raise RefusedError(
                        f"{spec} is already a member of the group {other.name}",
                        hint=f"discard or merge {other.name} first",
                    )
        chosen = self._group_method(method, targets, target_specs)
        group_create.refuse_method(chosen)
        for target in targets:
            if refusal := freeze_refusal(target.fstype, chosen, force=force):
                raise refusal
        members = group_create.member_names(name, targets)
        for member in members:
            if data.snapshot(member) is not None or self.host.dm.info(member) is not None:
                raise RefusedError(
                    f"the member name {member!r} is already in use", hint="choose another --name"
                )
        requests = [
            CreateRequest(
                target=target,
                name=member,
                cow_size=cow_size,
                cow_dir=cow_dir or self.context.cow_dir,
                chunk_sectors=chunk_sectors,
                max_freeze=max_freeze,
                command=command,
                force=force,
            )
            for target, member in zip(targets, members, strict=True)
        ]
        with ExitStack() as locks:
            for target in sorted(targets, key=lambda t: str(t.device)):  # one order: no deadlock
                locks.enter_context(self.lock(str(target.device), f"create group {name}"))
            marks = False  # whether member records are saved, marked, before the plan runs
            if chosen == "freeze":
                plan, records = group_create.plan_freeze(
                    name,
                    requests,
                    command,
                    max_freeze,
                    executor=self.host.run,
                    freezer=self.freezer,
                    watchdog=self.watchdog,
                )
            elif isinstance(impl := self.method(chosen), FrozenGroupable):
                marks = impl.records_first
                plan, records = group_create.plan_frozen(
                    name,
                    chosen,
                    [(impl, r) for r in requests],
                    max_freeze,
                    freezer=self.freezer,
                    watchdog=self.watchdog,
                )
            else:
                marks = impl.records_first
                from snapkit.methods.dm.window import guard_windows  # only dm groups need it

                plan, records = group_create.plan_block(
                    name,
                    chosen,
                    [(impl, r) for r in requests],
                    guard=lambda members, inner: guard_windows(
                        members, inner, max_freeze, self.host.resume_watchdog
                    ),
                )
            if dry_run:
                return _hooks_text(pre, plan.render(), post)
            group = Group(name, chosen, tuple(members))
            self._hook(pre, "--pre")
            try:
                self._apply_group(plan, group, records, marks=marks)
            finally:
                post_failed = self._hook(post, "--post", check=False)
            if post_failed:
                raise OperationError(f"group {name} was created, but {post_failed}")
            return self.group_status(name)

    def _group_method(self, method: str, targets: Sequence[Target], specs: Sequence[str]) -> str:
        """The one method every member takes: ``method``, or auto's choice for each member,
        which must be the same for all (mixed methods have no shared point in time)."""
        from snapkit.methods.group.create import refuse_method

        if method == "auto" and any(t.fstype == "btrfs" for t in targets):
            refuse_method("btrfs")  # auto would take btrfs's own snapshots: no shared one
        if method != "auto":
            refuse_method(method)
        if method != "auto":
            impl = self.method(method)
            for target, spec in zip(targets, specs, strict=True):
                reason = impl.unsuitable(target)
                if reason is not None:
                    raise RefusedError(
                        f"method {method} cannot snapshot {spec}: {reason}",
                        hint="every member of a group must suit the one --method",
                    )
            return method
        from snapkit.methods.auto import AutoMethod

        auto = AutoMethod(self.host)
        picked = []
        for target in targets:
            try:
                chosen, _why = auto.choose(target, command=True)
            except RefusedError as exc:
                raise RefusedError(exc.message, hint=exc.hint) from None
            picked.append(chosen.name)
        if len(set(picked)) > 1:
            mixed = ", ".join(f"{s}: {m}" for s, m in zip(specs, picked, strict=True))
            raise RefusedError(
                f"the members would take different methods ({mixed}): mixed methods share no "
                "point in time",
                hint="give one --method that suits every member (dm, or freeze with a command)",
            )
        return picked[0]

    def _apply_group(
        self, plan: Plan, group: Group, records: tuple[SnapshotRecord, ...], *, marks: bool
    ) -> None:
        """Save the group's entry, marked pending create with its planned members, then run
        the plan, then save the member records. With ``marks`` (a member method that
        ``records_first``, as dm-direct: its origin's newest writes live in the COW once
        switched), the member records are saved marked ``pending create`` up front too, as a
        single create does, so that no family's recovery takes such a COW for a leftover;
        the group's recovery then makes the group gone the way each member discards."""
        existed = self.state.path.exists()
        before = self.load()
        pending = before.with_group(replace(group, pending=Pending.CREATE, planned=records))
        for record in records if marks else ():
            pending = pending.with_snapshot(record.marked(Pending.CREATE))
        self.state.save(pending)
        try:
            self.apply_plan(plan)
        except PlanError as exc:
            if not (exc.undo_failures or exc.skipped):
                if existed or before != StateData():
                    self.state.save(before)
                else:  # a failed create changes nothing, not even a file that was not there
                    self.state.path.unlink(missing_ok=True)
            raise
        now = time.time()
        data = self.load()
        for record in records:
            data = data.with_snapshot(replace(record, created_at=now))
        self.state.save(data.with_group(group))

    def group(self, name: str) -> Group | None:
        return self.load().group(name)

    def _group(self, name: str) -> Group:
        found = self.group(name)
        if found is None:
            raise RefusedError(
                f"no snapshot group named {name!r}", hint="see 'snapkit snapshot list'"
            )
        if found.pending is Pending.CREATE:
            raise RefusedError(
                f"the create of group {name} was cut short", hint="settle it: 'snapkit recover'"
            )
        return found

    def group_status(self, name: str) -> GroupStatus:
        group = self._group(name)
        return GroupStatus(group, tuple(self._observed(self.record(m)) for m in group.members))

    def merge_group(
        self,
        name: str,
        *,
        wait: bool = False,
        progress: Progress | None = None,
        dry_run: bool = False,
    ) -> GroupStatus | str:
        """Roll every member back. Every member's merge is planned first (each refusal --
        an origin still mounted -- comes before any member starts), then each is run."""
        return self._end_group(name, Pending.MERGE, wait=wait, progress=progress, dry_run=dry_run)

    def discard_group(
        self, name: str, *, force: bool = False, dry_run: bool = False
    ) -> GroupStatus | str:
        return self._end_group(name, Pending.DISCARD, wait=True, force=force, dry_run=dry_run)

    def _end_group(
        self,
        name: str,
        op: Pending,
        *,
        wait: bool,
        progress: Progress | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> GroupStatus | str:
        group = self._group(name)
        if group.pending is not None and group.pending is not op:
            raise RefusedError(
                f"a {group.pending} of group {name} is under way, or was cut short",
                hint=f"finish it: 'snapkit snapshot {group.pending} {name}'; after a crash, "
                "'snapkit recover' finishes it",
            )
        left = self.state.load()  # a member a merge of the group already finished is gone
        records = [self.record(m) for m in group.members if left.snapshot(m) is not None]
        texts = []
        for record in records:  # refusals of every member before any changes
            if record.pending is None:
                impl = self.method_of(record)
                plan = (
                    impl.plan_merge(record)
                    if op is Pending.MERGE
                    else impl.plan_discard(record, force=force)
                )
                texts.append(plan.render())
        if dry_run:
            ends = [self._end_one(r.name, op, wait, progress, True, force) for r in records]
            return "".join(str(t) for t in ends)
        # The group's verb is saved before any member's: a cut between two members must not
        # leave some rolled back (or dropped) and the rest as they were, with nothing saying
        # the group meant all of them: recover would finish the member that had started and
        # re-assemble the other as a snapshot. recover rolls a marked group forward on every
        # member (snapkit.methods.group.recover); a failure before any member began undoes it.
        self.state.save(self.load().with_group(replace(group, pending=op)))
        try:
            done = [self._end_one(r.name, op, wait, progress, False, force) for r in records]
        except BaseException:
            now = self.state.load()
            if all((r := now.snapshot(m)) is not None and r.pending is None for m in group.members):
                self.state.save(now.with_group(group))  # no member began: the verb is undone
            raise
        statuses = tuple(d for d in done if isinstance(d, SnapshotStatus))
        if all(s.state is State.MERGED for s in statuses):
            self.state.save(self.load().without_group(name))
        return GroupStatus(group, statuses)

    def _end_one(
        self,
        name: str,
        op: Pending,
        wait: bool,
        progress: Progress | None,
        dry_run: bool,
        force: bool,
    ) -> SnapshotStatus | str:
        record = self.record(name)
        impl = self.method_of(record)
        with self.lock(record.origin, f"{op} {name}"):
            return self._end(impl, record, op, wait, progress, dry_run, force=force)

    def mount_group(self, name: str, directory: Path, *, rw: bool = False) -> list[Path]:
        """Every member under ``directory``, each on ``directory/SUFFIX`` (made if needed)."""
        group = self._group(name)
        if not directory.is_dir():
            raise RefusedError(f"{directory} is not a directory", hint=f"mkdir -p {directory}")
        done: list[Path] = []
        try:
            for member in group.members:
                where = directory / member.removeprefix(f"{name}-")
                where.mkdir(exist_ok=True)
                self.mount(member, where, rw=rw)
                done.append(where)
        except SnapkitError:
            for member, where in zip(group.members, done, strict=False):  # all or none
                self.umount(member, where)
            raise
        return done

    def umount_group(self, name: str) -> list[Unmounted]:
        """Unmount every mounted member; refused when none is mounted."""
        group = self._group(name)
        done = []
        for member in group.members:
            record = self._view(member)
            if self._mounts_of(record, None) or record.method == "dm-direct":
                done.append(self.umount(member))
        if not done:
            raise RefusedError(f"no member of group {name} is mounted", hint="nothing to unmount")
        return done

    def _refuse_member(self, name: str, verb: str) -> None:
        group = self.load().group_of(name)
        if group is not None:
            raise RefusedError(
                f"{name} is a member of the snapshot group {group.name}: its snapshots are one "
                "point in time and end together",
                hint=f"snapkit snapshot {verb} {group.name}",
            )

    # -- reading ------------------------------------------------------------------------------

    def status(self, name: str) -> SnapshotStatus:
        return self._observed(self.record(name))

    def list(self) -> list[SnapshotStatus]:
        return [self._observed(r) for r in self.load().snapshots]

    def _observed(self, record: SnapshotRecord) -> SnapshotStatus:
        """The status; a merge its own tool finished (lvm) also drops the record here."""
        impl = self.method_of(record)
        status = impl.status(record)
        done = status.state is State.MERGED and record.pending in MERGE_OR_DISCARD
        if done and not isinstance(impl, KernelMerge):
            self.state.save(self.load().without_snapshot(record.name))
        return status

    def mount(self, name: str, directory: Path, *, rw: bool = False) -> None:
        """Mount the snapshot; read-only unless ``rw``. The options are the method's own where
        it recorded them (btrfs: ``ro,subvol=.snapkit/NAME`` on the origin's device). A copy
        has the origin's uuid (xfs needs ``nouuid``) and may have a log to replay: a writable
        snapshot device (dm, lvm) takes the replay into its COW, as ``mount -o ro`` does for
        an LVM snapshot, which also leaves it checkable. A read-only one (dm-direct) cannot:
        xfs and btrfs, whose frozen copies keep a log, are mounted through a throwaway
        writable layer (:mod:`snapkit.methods.dm.layer`); ext4, whose freeze leaves a clean journal,
        gets :func:`snapkit.host.fs.snapshot_mount_options` (``noload``)."""
        record = self._view(name)
        if not directory.is_dir():
            raise RefusedError(f"{directory} is not a directory", hint=f"mkdir -p {directory}")
        if not record.device:
            raise RefusedError(
                f"{name} was taken by an external command ({record.method}): "
                "snapkit has no device to mount"
            )
        read_only = False
        if record.method in DM_METHODS:
            info = self.host.dm.info(record.device.removeprefix("/dev/mapper/"))
            if info is None:
                raise RefusedError(f"the snapshot device {record.device} does not exist")
            if rw and info.read_only:
                raise RefusedError(
                    f"{record.device} is read-only: it is the {record.method} point-in-time copy",
                    hint="mount it without --rw",
                )
            read_only = info.read_only
        fstype = record.details.get("fstype", "")
        if layer.needs_layer(fstype, read_only):
            self._mount_layer(record, fstype, directory)
            return
        argv = ["mount"] + (["-t", fstype] if fstype else [])
        options = _mount_options(record, fstype, rw, read_only)
        argv += ["-o", ",".join(options)] if options else []
        self._run_mount([*argv, record.device, str(directory)], record.device, fstype)

    def _mount_layer(self, record: SnapshotRecord, fstype: str, directory: Path) -> None:
        """Build the layer (or take the one a previous mount left), record it, mount it. One
        plan: a mount that fails takes the layer it built away again."""
        over = layer.Layer.of(record)
        s = [] if self.host.dm.info(over.name) is not None else layer.build(self.host, over)
        if fstype == "btrfs":  # the copy shares the origin's fsid: drop stale registrations
            s.append(
                Step(
                    "btrfs device scan --forget",
                    lambda: self.host.run.run(["btrfs", "device", "scan", "--forget"], check=False),
                )
            )
        argv = ["mount", "-t", fstype, "-o", ",".join(_mount_options(record, fstype, False, False))]
        argv += [over.device, str(directory)]
        s.append(Step(" ".join(argv), lambda: self._run_mount(argv, over.device, fstype)))
        title = f"mount {record.name} through a throwaway layer ({over.device})"
        with self.lock(record.origin, f"mount {record.name}"):
            self.apply_plan(Plan(title, tuple(s)))
            self.state.save(self.load().with_snapshot(layer.recorded(record, over)))

    def _run_mount(self, argv: Sequence[str], device: str, fstype: str = "") -> None:
        result = self.host.run.run(argv, check=False)
        if not result.ok:
            first = _first_line(result)
            hint = "see dmesg for the kernel's reason"
            if fstype == "btrfs":  # same fsid as its origin: 6.1 says EEXIST, 6.7+ has temp-fsid
                hint += (
                    "; a kernel before 6.7 refuses a btrfs copy while its origin is mounted "
                    "(same fsid): unmount the origin first"
                )
            raise OperationError(f"mount {device} failed: {first}", hint=hint)

    def umount(self, name: str, directory: Path | None = None) -> Unmounted:
        """Unmount what :meth:`mount` mounted: every mount of the snapshot's view (only the
        one on ``directory`` if given) and, once nothing is mounted from it, the throwaway
        layer a read-only copy was mounted through, so the next mount builds a fresh one and
        merge and discard have nothing to pull away. The mounts are read from the kernel's
        table, not recorded: one made by hand, or by a snapkit that was killed, is found too.
        The umounts run one by one (a filesystem cannot be put back as it was, so there is
        nothing to undo); the layer's removal is a plan whose undo rebuilds it, unmounted, as
        the next mount would take it."""
        record = self._view(name)
        if not record.device:
            raise RefusedError(
                f"{name} was taken by an external command ({record.method}): "
                "snapkit mounted nothing of it"
            )
        where = directory.resolve() if directory is not None else None
        over = layer.Layer.of(record) if record.method == "dm-direct" else None
        built = over if over is not None and self.host.dm.info(over.name) is not None else None
        found = self._mounts_of(record, built.name if built else None)
        chosen = [m for m in found if where is None or m.mountpoint == where]
        if not chosen:
            on = f" on {where}" if where is not None else ""
            mounted = ", ".join(str(m.mountpoint) for m in found)
            raise RefusedError(
                f"snapshot {name} is not mounted{on}",
                hint=f"it is mounted on {mounted}" if mounted else "nothing to unmount",
            )
        with self.lock(record.origin, f"umount {name}"):
            for m in sorted(chosen, key=lambda m: -m.mount_id):  # the newest first
                self._run_umount(m.mountpoint)
            if built is None or len(chosen) < len(found):
                return Unmounted(name, tuple(m.mountpoint for m in chosen), None)
            title = f"remove the throwaway layer of {name} ({built.device})"
            self.apply_plan(Plan(title, tuple(layer.teardown(self.host, built))))
            self.state.save(self.load().with_snapshot(layer.forgotten(self.record(name))))
        return Unmounted(name, tuple(m.mountpoint for m in chosen), built.device)

    def _mounts_of(self, record: SnapshotRecord, layer_name: str | None) -> tuple[Mount, ...]:
        """The mounts of the snapshot's view: its layer when one is built, else its device
        (btrfs: the subvolume of the origin's device that the record names)."""
        dm_name = layer_name or (
            record.device.removeprefix("/dev/mapper/") if record.method in DM_METHODS else None
        )
        if record.details.get("fstype") == "zfs":  # no device: the mount's source names it
            return tuple(
                m for m in self.mount_table() if m.fstype == "zfs" and m.source == record.device
            )
        info = self.host.dm.info(dm_name) if dm_name else None
        dev: DevNum | None = info.dev if info else block_devnum(record.device)
        subvol = record.details.get("subvol")
        return tuple(
            m
            for m in self.mount_table()
            if dev is not None
            and mount_devnum(m) == dev
            and (subvol is None or m.root == "/" + subvol)
        )

    def _run_umount(self, directory: Path) -> None:
        result = self.host.run.run(["umount", str(directory)], check=False)
        if not result.ok:
            raise OperationError(
                f"umount {directory} failed: {_first_line(result)}",
                hint=f"is something using it? see 'fuser -vm {directory}'",
            )

    # -- watch: grow a COW before it overflows ---------------------------------------------

    def watch(
        self,
        name: str,
        *,
        extend_at: float,
        extend_by: int,
        interval: float = 1.0,
        once: bool = False,
        report: Callable[[str], None] | None = None,
    ) -> SnapshotStatus:
        """Poll the snapshot's COW usage and grow the COW by ``extend_by`` bytes whenever it
        reaches ``extend_at`` percent, as dmeventd's autoextend does for LVM. A COW that fills
        invalidates the snapshot for good, so that is an error, in plain words. Returns when
        the snapshot is merged or gone from the state file, or after one look if ``once``."""
        say = report or (lambda _text: None)
        record = self.record(name)
        impl = self.method_of(record)
        if not isinstance(impl, Extendable):
            raise RefusedError(
                f"{name} ({record.method}) has no COW snapkit can grow",
                hint="watch is for --method dm and lvm snapshots",
            )
        # A long-running watch says once that it is on guard, so that a script (or a person)
        # starting writes behind it knows from when on the COW is being watched.
        announce = not once
        warned = False  # said once per shortage of room under a dm COW file, not every look
        while True:
            found = self.load().snapshot(name)
            if found is None:
                return SnapshotStatus(record, State.MERGED, None, None, "no longer recorded")
            record = found
            status = impl.status(record)
            if status.state in (State.INVALID, State.OVERFLOW):
                # The method's own words: an overflowed (PO) copy still reads, an invalid one
                # does not, and an I/O error invalidates as a full COW does.
                what, todo = split_advice(status.message or f"{status.state}; discard it")
                raise OperationError(
                    f"snapshot {name} is {what}",
                    hint=f"{todo}; next time, a larger --cow-size or a lower --extend-at",
                )
            if status.state is not State.ACTIVE:
                return status
            used = status.usage_percent or 0.0
            space = _cow_space(record)
            if announce:
                where = f"; {space[0].words()}" if space else ""
                say(
                    f"watching {name}: COW {used:.2f}% full; grows by {extend_by} bytes at "
                    f"{extend_at:g}%, looked at every {interval:g} s{where}"
                )
                announce = False
            short = space is not None and space[1] > space[0].free
            if short and not warned and space is not None:
                here, could = space
                say(
                    f"warning: the COW of {name} may still grow by {format_size(could)}, but "
                    f"only {here.words()}: when it fills, the kernel drops the snapshot; free "
                    f"space there, or discard the snapshot"
                )
            warned = short
            if used >= extend_at:
                with self.lock(record.origin, f"extend {name}"):
                    self.apply_plan(impl.plan_extend(record, extend_by))
                grown = impl.status(record)
                say(
                    f"{name}: COW was {used:.2f}% full; grew it by {extend_by} bytes, "
                    f"now {grown.usage_percent or 0.0:.2f}% full"
                )
                status = grown
            if once:
                return status
            time.sleep(interval)

    # -- device prepare and release ---------------------------------------------------------

    def prepare(self, device: str, name: str, *, dry_run: bool = False) -> PrepareResult | str:
        """Put the plain ``device`` under ``/dev/mapper/NAME`` for the dm methods, and record
        it with what finds its disk again after a reboot (:mod:`snapkit.methods.dm.device`)."""
        from snapkit.methods.dm.device import plan_prepare  # only this verb needs it

        with self.lock(device, f"prepare {name}"):
            plan, result = plan_prepare(self.host, self.load(), device, name)
            if dry_run:
                return plan.render()
            dev = block_devnum(device)
            ident = stable_id(dev, self.host.run) if dev is not None else None
            self.apply_plan(plan)
            self.state.save(self.load().with_device(Prepared(name, str(result.under), ident)))
            return result

    def release(self, name: str, *, dry_run: bool = False) -> str:
        """Remove the prepared ``/dev/mapper/NAME``; the device it was over (to mount again)."""
        from snapkit.methods.dm.device import plan_release  # only this verb needs it

        with self.lock(f"/dev/mapper/{name}", f"release {name}"):
            plan = plan_release(self.host, name)
            if dry_run:
                return plan.render()
            record = self.load().device(name)
            self.apply_plan(plan)
            self.state.save(self.load().without_device(name))
            return record.device if record else ""

    # -- recover -------------------------------------------------------------------------------

    def recover(self, *, dry_run: bool = False, finish: bool = True) -> Recovery | str:
        """Run every method family's recovery (:mod:`snapkit.recover`), then (``finish``)
        complete the merges it resumed: a dm-direct discard is its kernel merge, which keeps
        the origin's writes, so it is finished as a discard."""
        result = recover.run(self.context, self.state, self.apply_plan, dry_run=dry_run)
        if isinstance(result, str) or not finish:
            return result
        # Once each: a group's recovery names again the members a family already resumed.
        for name in dict.fromkeys(result.merging):
            record = self.state.load().snapshot(name)
            if record is not None and record.pending is Pending.DISCARD:
                self._end_one(name, Pending.DISCARD, True, None, False, False)
            else:
                self._end_one(name, Pending.MERGE, True, None, False, False)
        data = self.state.load()
        for group in data.groups:  # a group merge or discard recover finished on every member
            if group.pending in MERGE_OR_DISCARD and not any(map(data.snapshot, group.members)):
                self.state.save(self.state.load().without_group(group.name))
        return result

    # -- merge and discard --------------------------------------------------------------------

    def merge(
        self,
        name: str,
        *,
        wait: bool = False,
        progress: Progress | None = None,
        dry_run: bool = False,
        force: bool = False,
    ) -> SnapshotStatus | str:
        """``force``: a merge that destroys more than the snapshot (zfs: the later snapshots)
        goes ahead; for a method whose merge never does (base.ForcedMerge), a usage error."""
        record = self.record(name)
        self._refuse_member(record.name, "merge")
        impl = self.method_of(record)
        if force and not isinstance(impl, ForcedMerge):
            raise UsageError(
                f"merge --force is for a merge across later snapshots (zfs); a {record.method} "
                "merge has nothing to force",
                hint="leave out --force",
            )
        with self.lock(record.origin, f"merge {name}"):
            return self._end(impl, record, Pending.MERGE, wait, progress, dry_run, force=force)

    def discard(
        self, name: str, *, force: bool = False, dry_run: bool = False
    ) -> SnapshotStatus | str:
        record = self.record(name)
        self._refuse_member(record.name, "discard")
        impl = self.method_of(record)
        with self.lock(record.origin, f"discard {name}"):
            return self._end(impl, record, Pending.DISCARD, True, None, dry_run, force=force)

    def _end(
        self,
        impl: Method,
        record: SnapshotRecord,
        op: Pending,
        wait: bool,
        progress: Progress | None,
        dry_run: bool,
        *,
        force: bool = False,
    ) -> SnapshotStatus | str:
        pending = record.pending
        if pending and pending is not op:
            # The mark may be all a killed snapkit left (lvm: even before LVM's command ran),
            # so the way out names recover, which settles every case: finishes the verb, drops
            # a done one, or clears an lvm merge that never started (then discard works).
            hint = "finish it: 'snapkit recover'"
            if pending is not Pending.CREATE:
                waits = " --wait" if pending is Pending.MERGE else ""
                hint = (
                    f"finish it: 'snapkit snapshot {pending} {record.name}{waits}'; if snapkit "
                    "was killed or the machine crashed, 'snapkit recover' settles it first"
                )
            raise RefusedError(
                f"a {pending} of {record.name} is under way, or was cut short", hint=hint
            )
        if not isinstance(impl, KernelMerge):
            return self._end_plain(impl, record, op, dry_run, force=force)
        start: Plan | None = None
        if not pending or not impl.started(record):
            start = (
                impl.plan_merge(record)
                if op is Pending.MERGE
                else impl.plan_discard(record, force=force)
            )
        if dry_run:
            text = start.render() if start else ""
            finish = impl.plan_finish(record).render()
            return text + f"then, once the kernel is done:\n{finish}"
        if start is not None:
            record = self._start(impl, record, start, op)
        status = impl.status(record)
        if status.state is not State.MERGED and not wait:
            return status
        status = self._wait(impl, record, progress)
        self.apply_plan(impl.plan_finish(record))
        self.state.save(self.load().without_snapshot(record.name))
        return replace(status, message=f"{op} done")

    def _end_plain(
        self, impl: Method, record: SnapshotRecord, op: Pending, dry_run: bool, *, force: bool
    ) -> SnapshotStatus | str:
        """A method whose own tool merges (lvm): the merge may only be *scheduled* (LVM defers
        it while the origin is open), so the record stays, marked, while the method says
        MERGING, and is dropped once it says MERGED -- here or in a later status."""
        if record.pending is op:
            status = impl.status(record)
            if status.state is State.MERGED:
                self.state.save(self.load().without_snapshot(record.name))
                return replace(status, message=f"{op} done")
        if op is Pending.DISCARD:
            start = impl.plan_discard(record, force=force)
        elif force and isinstance(impl, ForcedMerge):
            start = impl.plan_forced_merge(record)
        else:
            start = impl.plan_merge(record)
        if dry_run:
            return start.render()
        # The mark first, as in _start, for a method whose verbs are LVM's commands (lvm,
        # lvm-thin: records_first): a crash once lvconvert or lvremove has begun must find it,
        # or the record would call the merged-away LV gone (invalid), or LVM's half-removed
        # leftover an active snapshot. btrfs and remount-ro save none: recover reads the disk.
        marks = impl.records_first
        marked = record.marked(op)
        if marks:
            self.state.save(self.load().with_snapshot(marked))
        try:
            self.apply_plan(start)
        except PlanError:
            if marks and not self._tool_started(impl, marked):
                self.state.save(self.load().with_snapshot(record))
            raise
        if marks and op is Pending.MERGE and (status := impl.status(marked)).state is State.MERGING:
            return status
        self.state.save(self.load().without_snapshot(record.name))
        return SnapshotStatus(record, State.MERGED, None, 100.0, f"{op} done")

    @staticmethod
    def _tool_started(impl: Method, marked: SnapshotRecord) -> bool:
        """Did a failed or interrupted merge or discard get far enough that LVM goes on (or
        is done)? When the status cannot be read, assume it did: a stale mark is harmless, a
        missing one is not."""
        try:
            return impl.status(marked).state in (State.MERGING, State.MERGED)
        except SnapkitError:
            return True

    def _start(
        self, impl: KernelMerge, record: SnapshotRecord, start: Plan, op: Pending
    ) -> SnapshotRecord:
        """Save the pending mark, then start. In this order because the start hands the origin
        to the kernel's merge, which has no undo: a crash after it with no mark on disk would
        have ``recover`` rebuild a plain snapshot over a half rolled-back origin. A mark whose
        start never ran is harmless: ``started`` says so, and the start runs again (or
        ``recover`` loads ``snapshot-merge``, which merges the untouched COW from the start)."""
        marked = impl.mark_pending(record, op)
        self.state.save(self.load().with_snapshot(marked))
        try:
            self.apply_plan(start)
        except PlanError as exc:
            if record is not marked and not (exc.undo_failures or exc.skipped):
                self.state.save(self.load().with_snapshot(record))  # rolled back: no mark
            raise
        return marked

    def _wait(
        self, impl: Method, record: SnapshotRecord, progress: Progress | None
    ) -> SnapshotStatus:
        try:
            while True:
                status = impl.status(record)
                if progress is not None:
                    progress(status)
                if status.state is State.MERGED:
                    return status
                if status.state is not State.MERGING:
                    what, todo = split_advice(status.message or "")
                    raise OperationError(
                        what or f"the merge of {record.name} stopped: {status.state}", hint=todo
                    )
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            raise OperationError(
                f"stopped waiting for {record.name}",
                hint=f"the kernel keeps merging; 'snapkit snapshot merge {record.name} --wait' "
                "finishes it",
            ) from None


@dataclass(frozen=True)
class Unmounted:
    """What ``umount`` did: the mount points it unmounted, and the throwaway layer's device
    it removed with the last of them (None: there was none)."""

    name: str
    mountpoints: tuple[Path, ...]
    layer: str | None


@dataclass(frozen=True)
class Frozen:
    """What ``freeze`` did: the user's command's result, and how long the window was."""

    mountpoint: Path
    result: Completed
    window: float | None


def freeze(
    spec: str,
    command: Sequence[str],
    *,
    max_freeze: float,
    dry_run: bool = False,
    settings: Settings | None = None,
) -> Frozen | str:
    """``snapkit freeze``: freeze the filesystem at ``spec``, run ``command``, thaw; the plan
    text instead if ``dry_run``. No state is recorded and no device-mapper is opened, so this
    verb needs no :class:`Flow`; it takes the origin's lock from the same :class:`Settings`,
    so it excludes every other verb on that origin."""
    from snapkit.methods.freeze import freeze_plan, unsuitable  # the flow loads no method

    settings = settings or Settings.from_env()
    target = resolve(spec)
    reason = unsuitable(target)
    if reason:
        raise RefusedError(reason)
    if refusal := freeze_refusal(target.fstype, "freeze", force=False, forceable=False):
        raise refusal
    mountpoint = target.mountpoint or Path(spec)
    outcome = Outcome()
    plan = freeze_plan(
        mountpoint,
        command,
        max_freeze,
        executor=SubprocessExecutor(),
        freezer=freezing.IoctlFreezer(),
        watchdog=freezing.real_watchdog(mountpoint),
        outcome=outcome,
        fail_on_exit=False,
        env={"SNAPKIT_MOUNTPOINT": str(mountpoint), "SNAPKIT_DEVICE": str(target.device)},
    )
    if dry_run:
        return plan.render()
    with origin_lock(str(target.device), operation="freeze", lock_dir=settings.lock_dir):
        apply(plan)
    assert outcome.result is not None  # the plan ran the command, or raised
    return Frozen(mountpoint, outcome.result, outcome.window)


def _cow_space(record: SnapshotRecord) -> tuple[Room, int] | None:
    """The room under a dm snapshot's COW file and how much more the file may take; None
    for a COW that is not a file (lvm's is an LV, whose room is the VG's) or is gone."""
    cow_file = record.details.get("cow_file")
    if not cow_file:
        return None
    try:
        return cow_room(Path(cow_file))
    except OSError:
        return None


def _mount_options(record: SnapshotRecord, fstype: str, rw: bool, read_only: bool) -> list[str]:
    recorded = [o for o in record.details.get("mount_options", "").split(",") if o]
    if recorded:
        if rw and "ro" in recorded:
            raise RefusedError(
                f"{record.name} is a read-only {record.method} snapshot",
                hint="mount it without --rw",
            )
        return recorded
    if read_only:
        return list(snapshot_mount_options(fstype))
    return ([] if rw else ["ro"]) + (["nouuid"] if fstype == "xfs" else [])


def _first_line(result: Completed) -> str:
    """What a failed mount or umount said, in one line."""
    return (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[0]


def _hooks_text(pre: str | None, body: str, post: str | None) -> str:
    head = f"before: sh -c {pre!r}\n" if pre else ""
    tail = f"after (always): sh -c {post!r}\n" if post else ""
    return head + body + tail


def _pause(index: int) -> None:
    print(f"snapkit: test pause before step {index + 1}", file=sys.stderr, flush=True)
    time.sleep(600)


def _with_test_pause(plan: Plan, ordinal: int) -> Plan:
    spec = os.environ.get(PAUSE_ENV, "")
    if not spec:
        return plan
    which, _, step = spec.rpartition(":")
    if int(which or 1) != ordinal:
        return plan
    index = int(step) - 1
    if index == len(plan.steps):  # N = steps + 1: after the last step, before what follows
        end = Step("test pause after the last step", lambda: _pause(index))
        return replace(plan, steps=(*plan.steps, end))
    if not 0 <= index < len(plan.steps):
        return plan
    original = plan.steps[index]

    def paused() -> object:
        _pause(index)
        return original.do()

    steps = list(plan.steps)
    steps[index] = Step(
        original.description, paused, original.undo, original.undo_description, original.must_undo
    )
    return replace(plan, steps=tuple(steps))


__all__ = ["PAUSE_ENV", "Flow", "Frozen", "Unmounted", "freeze", "real_host"]
