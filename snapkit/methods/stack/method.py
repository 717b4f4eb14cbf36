"""A block-level method (lvm, lvm-thin, dm, dm-direct, auto) applied to a *stacked* origin:
a filesystem on dm-crypt (or a plain linear mapping) over the device the method snapshots.

Measured on 6.1 (issue 19): ``lvcreate -s`` of the LV under a crypt mapping freezes nothing,
because LVM's lockfs suspend finds no filesystem on the LV; the snapshot's ext4 then needs a
journal recovery and misses the last acknowledged writes. What works, and what this wraps
around the inner method's own plan:

1. create: FIFREEZE the filesystem at the top (under the watchdog), run the inner method's
   create on the base with every suspend of its own *without* lockfs (a lockfs suspend under a
   frozen filesystem fails with EBUSY; LVM's lockfs suspend of the bare LV is harmless),
   thaw, then rebuild the pass-through layers over the snapshot with the origin's cipher, key
   and offsets (``NAME-crypt``): that is the plaintext snapshot device.
2. merge (the filesystem unmounted): remove the snapshot's layers, park the origin's lowest
   layer on a zero device (:mod:`snapkit.methods.stack.layers`), run the inner merge, and
   move the layer back over the origin: ``/dev/mapper/crypthome`` keeps its name, uuid and key
   throughout, so the user's fstab and crypttab stay valid.
3. discard: remove the snapshot's layers, then the inner discard.

The record saved is the inner method's own (so its family's recovery and the state file's
reconciliation read it as ever), plus ``details["stack"]``; :meth:`StackedMethod.status`
shows the stacked view: ``origin`` the top device, ``device`` the plaintext snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

from snapkit.errors import RefusedError
from snapkit.host.cowdir import check_cow_dir
from snapkit.host.freezing import IoctlFreezer, Outcome, freeze_around, real_watchdog
from snapkit.host.stack import Kind, Stack, refuse_unsnapshottable
from snapkit.methods.base import Extendable, KernelMerge, Method
from snapkit.methods.stack import BLOCK_METHODS, STACK_KEY, luks
from snapkit.methods.stack import layers as L
from snapkit.model import CreateRequest, Pending, SnapshotRecord, SnapshotStatus, Target
from snapkit.plan import Plan, Step, rollback

if TYPE_CHECKING:  # only annotations need it: keeps the import graph one-way
    from snapkit.methods.base import Host


def stacked(record: SnapshotRecord) -> bool:
    return bool(record.details.get(STACK_KEY))


def info_of(record: SnapshotRecord) -> L.StackInfo:
    return L.StackInfo.of(record.details, STACK_KEY)


def shown(record: SnapshotRecord) -> SnapshotRecord:
    """The record as the user sees it: the top of each stack."""
    if not stacked(record):
        return record
    info = info_of(record)
    return replace(record, origin=info.top, device=info.device)


def _open_count(host: Host, name: str) -> int:
    info = host.dm.info(name)
    return info.open_count if info is not None else 0


class Deferred:
    """A plan built only when it runs, run as one step: its completed steps are undone in
    reverse if a later one fails, and by :meth:`undo` if a later step of the outer plan does.
    For the inner merge, which must be planned *after* the origin is released (LVM plans a
    deferred merge while its origin is open)."""

    def __init__(self, make: Callable[[], Plan]) -> None:
        self.make = make
        self.done: list[Step] = []

    def do(self) -> None:
        plan = self.make()
        for step in plan.steps:
            try:
                step.do()
            except BaseException:
                if step.must_undo:  # as plan.apply: a resume or thaw runs even if cut short
                    self.done.append(step)
                self.undo()
                raise
            self.done.append(step)

    def undo(self) -> None:
        """Every undo in reverse, as :func:`snapkit.plan.rollback` does; the first failure
        is raised at the end."""
        failures, _skipped = rollback(self.done)
        self.done.clear()
        if failures:
            raise failures[0][1]


class StackedMethod:
    """``inner`` applied to a stacked origin. Built per call by :func:`wrap` (create) or
    :func:`for_record` (every later verb)."""

    records_first: ClassVar[bool] = False
    name: ClassVar[str] = "stack"

    def __init__(
        self, inner: Method, host: Host, stack: Stack | None = None, key_file: str = ""
    ) -> None:
        self.inner = inner
        self.host = host
        self.stack = stack
        self.key_file = key_file  # --key-file: cryptsetup unlocks the copy's LUKS header
        self.why = ""  # auto's choice and its reason, for the plan's title

    def _refuse_stack(self, stack: Stack) -> None:
        """What no inner method can change: the walk stopped, or the key cannot be had."""
        refuse_unsnapshottable(stack)
        if not self.key_file:
            L.refuse_keyring(stack)
            return
        if len(stack.above) != 1 or stack.above[0].kind is not Kind.CRYPT:
            raise RefusedError(
                f"--key-file takes one crypt layer over the snapshotted device, not "
                f"{stack.describe()}",
                hint="leave out --key-file: snapkit then copies each layer from its table",
            )
        luks.check(self.host.run, str(stack.base.path), self.key_file)

    # -- create -----------------------------------------------------------------------------

    def unsuitable(self, target: Target) -> str | None:
        assert self.stack is not None
        try:
            self._refuse_stack(self.stack)
        except RefusedError as exc:
            return exc.message
        reason = self.inner.unsuitable(self.stack.base_target(target))
        if reason is None:
            return None
        return f"{reason} (the filesystem sits on {self.stack.describe()})"

    def plan_create(self, request: CreateRequest) -> tuple[Plan, SnapshotRecord]:
        stack = self.stack
        assert stack is not None
        self._refuse_stack(stack)
        top = request.target
        if request.cow_dir is not None:  # the method below sees only the unmounted base
            check_cow_dir(request.cow_dir, top)
        inner_request = replace(request, target=stack.base_target(top), frozen_above=True)
        plan, record = self.inner.plan_create(inner_request)
        info = L.StackInfo(
            top=str(top.device),
            mountpoint=str(top.mountpoint or ""),
            base=str(stack.base.path),
            base_snapshot=record.device,
            uppers=L.uppers_of(stack, request.name),
            park=f"{request.name}-park",
            key_file=self.key_file,
        )
        for name in [u.upper for u in info.uppers] + [info.park]:
            if self.host.dm.info(name) is not None:
                raise RefusedError(
                    f"a dm device named {name} already exists", hint="choose another --name"
                )
        # One step: the inner plan's last step commits it (a resumed swap has no undo of its
        # own), so a later failure (building the layers over it) discards what it made.
        made, ran = record, Deferred(lambda: plan)
        listing = "; ".join(step.description for step in plan.steps)
        inner_steps: tuple[Step, ...] = (
            Step(
                f"{plan.title}: {listing}",
                ran.do,
                lambda: self._unmake(made),
                f"discard {record.name} ({record.method}) again",
            ),
        )
        if top.mountpoint is not None:
            inner_steps = freeze_around(
                top.mountpoint,
                inner_steps,
                request.max_freeze,
                freezer=IoctlFreezer(),
                watchdog=real_watchdog(top.mountpoint),
                outcome=Outcome(),
            )
        build = self._build(info, record)
        title = (
            f"{plan.title}, under {top.device} (frozen at {top.mountpoint or 'its device'}); "
            f"the stack: {stack.describe()}" + (f" [{self.why}]" if self.why else "")
        )
        record = replace(record, details={**record.details, STACK_KEY: info.to_text()})
        return Plan(title, (*inner_steps, *build)), record

    def _build(self, info: L.StackInfo, record: SnapshotRecord) -> list[Step]:
        if info.key_file:
            upper = info.uppers[0].upper
            return [luks.open_step(self.host.run, info.key_file, info.base_snapshot, upper)]
        return L.build_steps(self.host.dm, info, read_only=self._read_only(record))

    def _remove(self, info: L.StackInfo, record: SnapshotRecord) -> list[Step]:
        if info.key_file:
            upper = info.uppers[0].upper
            return [luks.close_step(self.host.run, info.key_file, info.base_snapshot, upper)]
        return L.remove_steps(self.host.dm, info, read_only=self._read_only(record))

    def _unmake(self, record: SnapshotRecord) -> None:
        """Discard the inner snapshot just made, as the flow would: for a method whose
        discard the kernel finishes (dm), its start and then its finish."""
        inner = self.inner
        Deferred(lambda: inner.plan_discard(record, force=True)).do()
        if isinstance(inner, KernelMerge):
            marked = inner.mark_pending(record, Pending.DISCARD)
            Deferred(lambda: inner.plan_finish(marked)).do()

    def _read_only(self, record: SnapshotRecord) -> bool:
        """dm-direct's copy is a read-only device; a layer over it must be loaded read-only."""
        return record.method == "dm-direct"

    # -- later verbs ------------------------------------------------------------------------

    def status(self, record: SnapshotRecord) -> SnapshotStatus:
        status = self.inner.status(record)
        info = info_of(record)
        message = status.message
        missing = [u.upper for u in info.uppers if self.host.dm.info(u.upper) is None]
        if missing and status.state.value == "active":
            message = (
                f"its layer {L.MAPPER}{missing[-1]} is not open (after a reboot?): open "
                f"{info.uppers[-1].name}, then run 'snapkit recover'"
            )
        return replace(status, record=shown(record), message=message)

    def _refuse_open(self, record: SnapshotRecord, verb: str, *, origin: bool) -> None:
        info = info_of(record)
        for u in info.uppers:
            if _open_count(self.host, u.upper):
                raise RefusedError(
                    f"{L.MAPPER}{u.upper} is in use (mounted?)",
                    hint=f"umount it (snapkit snapshot umount {record.name}), then {verb} again",
                )
        if origin and _open_count(self.host, info.uppers[-1].name):
            where = info.mountpoint or info.top
            raise RefusedError(
                f"{info.top} is in use: the filesystem on it must be unmounted to {verb}",
                hint=f"umount {where}, then run 'snapkit snapshot {verb} {record.name} --wait'",
            )

    def plan_merge(self, record: SnapshotRecord) -> Plan:
        self._refuse_open(record, "merge", origin=True)
        info = info_of(record)
        size = self._base_size(info)
        remove = self._remove(info, record)
        deferred = Deferred(lambda: self.inner.plan_merge(record))
        merge = Step(
            f"merge {record.name} ({record.method}) into {info.base}",
            deferred.do,
            deferred.undo,
            "undo the merge's start",
        )
        origin = info.uppers[0].name
        if info.key_file:  # a keyring key cannot be parked: close, merge, open again
            run = self.host.run
            steps: tuple[Step, ...] = (
                *remove,
                luks.close_step(run, info.key_file, info.base, origin),
                merge,
                luks.open_step(run, info.key_file, info.base, origin),
            )
        else:
            steps = (
                *remove,
                *L.park_steps(self.host.dm, info, size),
                merge,
                *L.unpark_steps(self.host.dm, info),
            )
        return Plan(f"merge {record.name} into {info.top} through its stack", steps)

    def _base_size(self, info: L.StackInfo) -> int:
        name = info.base.removeprefix(L.MAPPER)
        table = self.host.dm.table(name) if self.host.dm.info(name) else None
        if table is None:
            raise RefusedError(f"{info.base} is gone", hint="see 'snapkit recover'")
        return table.size

    def plan_discard(self, record: SnapshotRecord, *, force: bool = False) -> Plan:
        self._refuse_open(record, "discard", origin=False)
        info = info_of(record)
        remove = self._remove(info, record)
        # Planned once the layers are gone: the inner method refuses a snapshot held open.
        deferred = Deferred(lambda: self.inner.plan_discard(record, force=force))
        discard = Step(
            f"discard {record.name} ({record.method}) of {info.base}",
            deferred.do,
            deferred.undo,
            "undo the discard's steps",
        )
        return Plan(f"discard {record.name} of {info.top}, its layers first", (*remove, discard))


class StackedKernelMerge(StackedMethod):
    """The same, for an inner method whose merge the kernel runs (dm, dm-direct): the flow
    starts it, waits, then finishes it."""

    def _k(self) -> KernelMerge:
        assert isinstance(self.inner, KernelMerge)
        return self.inner

    def plan_finish(self, record: SnapshotRecord) -> Plan:
        return self._k().plan_finish(record)

    def mark_pending(self, record: SnapshotRecord, operation: Pending) -> SnapshotRecord:
        return self._k().mark_pending(record, operation)

    def started(self, record: SnapshotRecord) -> bool:
        return self._k().started(record)


class StackedExtendable(StackedMethod):
    def plan_extend(self, record: SnapshotRecord, by_bytes: int) -> Plan:
        assert isinstance(self.inner, Extendable)
        return self.inner.plan_extend(record, by_bytes)


class StackedBoth(StackedKernelMerge, StackedExtendable):
    pass


def _wrapped(inner: Method, host: Host, stack: Stack | None, key_file: str = "") -> StackedMethod:
    merge, extend = isinstance(inner, KernelMerge), isinstance(inner, Extendable)
    cls = {
        (False, False): StackedMethod,
        (True, False): StackedKernelMerge,
        (False, True): StackedExtendable,
        (True, True): StackedBoth,
    }[(merge, extend)]
    # The record names the inner method, and the flow reads records_first off the class.
    named = type(cls.__name__, (cls,), {"name": inner.name, "records_first": inner.records_first})
    made: StackedMethod = named(inner, host, stack, key_file)
    return made


def wrap(
    inner: Method,
    host: Host,
    target: Target,
    stack: Stack,
    *,
    command: bool = False,
    key_file: str = "",
) -> Method:
    """``inner`` for ``target``: wrapped when the target is stacked and ``inner`` snapshots
    block devices; as it is otherwise (freeze, remount-ro and btrfs work at the top)."""
    if not stack.stacked or inner.name not in BLOCK_METHODS:
        return inner
    if _takes_the_top(inner, host, target):
        return inner  # the filesystem's own device is the layer to snapshot (e.g. a plain linear)
    if inner.name == "auto":
        return _auto(inner, host, target, stack, command, key_file)
    return _wrapped(inner, host, stack, key_file)


def _takes_the_top(inner: Method, host: Host, target: Target) -> bool:
    """Whether a block method takes the filesystem's own device as it is: a dm ``linear``
    device someone else made is a pass-through layer only when no method snapshots it (the
    dm methods do, as they did before stacks were walked). A layer the walk passes through
    is never an LV (``classify`` tells LVs first), so only dm is asked: lvm's answer would
    cost an ``lvs`` run and be no."""
    if inner.name in ("lvm", "lvm-thin"):
        return False
    if inner.name == "auto":
        from snapkit.methods import registry

        inner = registry.get("dm", host)
    return inner.unsuitable(target) is None


def _auto(
    auto: Method, host: Host, target: Target, stack: Stack, command: bool, key_file: str
) -> Method:
    """``auto`` on a stack: the first block method that fits the base, saying why in the plan;
    if none does, auto at the top when it has something there (btrfs's own snapshots, or
    freeze around a given command), else a refusal naming the layer that stops the walk."""
    from snapkit.methods import registry
    from snapkit.methods.auto import ORDER

    refusals = []
    for name, why in ORDER:
        if name == "btrfs":
            continue
        wrapped = _wrapped(registry.get(name, host), host, stack, key_file)
        reason = wrapped.unsuitable(target)
        if reason is None:
            wrapped.why = (
                f"auto: {name}, because {stack.base.path} under it {why.removeprefix('it ')}"
            )
            return wrapped
        refusals.append(f"{name}: {reason}")
    if target.fstype == "btrfs" or command:
        return auto
    _wrapped(auto, host, stack, key_file)._refuse_stack(stack)
    raise RefusedError(
        f"no method fits {target.device}, on {stack.describe()} ({'; '.join(refusals)})",
        hint="prepare the device under the crypt layer once ('snapkit device prepare'), or "
        "give a snapshot command after '--' to use the freeze method",
    )


def for_record(inner: Method, host: Host, record: SnapshotRecord) -> Method:
    """The method for a saved record: wrapped if the record is stacked."""
    if not stacked(record):
        return inner
    return _wrapped(inner, host, None, info_of(record).key_file)


__all__ = ["StackedMethod", "for_record", "info_of", "shown", "stacked", "wrap"]
