"""snapkit's Python API: the live verbs of the ``snapkit`` command, as functions and a handle.

::

    import snapkit

    with snapkit.snapshot("/home", cow_size="2G") as snap:     # created here
        backup(snap.mount("/mnt/snap"))                         # a read-only view
    # unmounted and discarded here, even when the block raised; snap.keep() leaves it

    snap = snapkit.create("/home", name="before-upgrade")
    snap.status()
    snap.merge(wait=True, progress=lambda percent: print(f"{percent:.0f}%"))
    snapkit.list_snapshots()
    snapkit.recover_all()

Why a layer of its own: the ``snapkit`` command is a thin layer over these functions
(``snapkit/cli/``), so a program and the command line get the same refusals, the same plans
and the same state file, and cannot drift apart.

Errors are snapkit's one tree (:mod:`snapkit.errors`), each with ``message`` and ``hint``:
:class:`RefusedError` -- nothing was changed, fix the reason and call again;
:class:`OperationError` -- a step failed partway and what was done before it was undone;
:class:`UsageError` -- the call itself is malformed. All are :class:`SnapkitError`.

Sizes are ``int`` bytes or strings as the command line reads them (``"2G"``, ``"512M"``,
``"4K"``, ``"2048s"``; binary units). Each call opens the host's device-mapper for its own
duration, so a :class:`Snapshot` handle can be kept between calls. ``flow`` (a
:class:`snapkit.flow.Flow`) replaces that host: the CLI passes the one it built, unit tests
one on fakes. Most calls need root, as the command does.

Importing this module is cheap: the machinery of the verbs (methods, device-mapper, the state
file) is imported when a verb runs.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, overload

from snapkit.errors import (
    OperationError,
    RefusedError,
    SnapkitError,
    UsageError,
    ValidationError,
)
from snapkit.model import SnapshotStatus, State
from snapkit.validate import SECTOR, chunk_sectors, parse_chunk, parse_size

if TYPE_CHECKING:  # annotations only: these load when a verb runs
    from snapkit.flow import Flow, Frozen, Unmounted
    from snapkit.methods.dm.device import PrepareResult
    from snapkit.model import GroupStatus
    from snapkit.recover import Recovery

Size = int | str
"""Bytes, or a size string such as ``"2G"`` (binary units, as the command line reads it)."""

Progress = Callable[[float], None]
"""Called with a long operation's percent done (0.0 to 100.0), each time snapkit looks."""

StrPath = str | os.PathLike[str]

DEFAULT_METHOD = "auto"  # snapkit.methods.registry.DEFAULT_METHOD, without importing methods


# -- the handle -------------------------------------------------------------------------------


class Snapshot:
    """One snapshot snapkit recorded, by name. Get one from :func:`create` (or
    :func:`snapshot`, the same function) or :func:`get`; it holds no kernel resource, so it can
    be kept, and each method looks at the kernel afresh.

    As a context manager it is a throwaway snapshot: at the end of the ``with`` block, also
    when the block raised, what :meth:`mount` mounted through this handle is unmounted and a
    snapshot this handle created is discarded (its origin keeps its current content). Call
    :meth:`keep` inside the block to leave both as they are, for a later merge or discard; a
    merge or discard called in the block is not followed by another."""

    def __init__(
        self,
        name: str,
        *,
        flow: Flow | None = None,
        status: SnapshotStatus | None = None,
        owned: bool = False,
    ) -> None:
        self.name = name
        self.last_status = status
        """The status the last call on this handle returned (create, status, merge,
        discard, watch), without asking the kernel again; None before any."""
        self._flow = flow
        self._owned = owned  # created through this handle: the with block discards it
        self._kept = False
        self._ended = False  # merged or discarded through this handle
        self._mounted: list[Path] = []

    def __repr__(self) -> str:
        state = self.last_status.state.value if self.last_status else "?"
        return f"<snapkit.Snapshot {self.name!r} {state}>"

    def status(self) -> SnapshotStatus:
        """The snapshot as the kernel shows it now: state, COW usage, merge progress."""
        with _opened(self._flow) as flow:
            self.last_status = flow.status(self.name)
        return self.last_status

    def mount(self, directory: StrPath, *, rw: bool = False) -> Path:
        """Mount the snapshot's point-in-time view on ``directory`` (which must exist),
        read-only unless ``rw``, and return ``directory`` as a Path. A dm-direct copy of xfs or
        btrfs is mounted through a throwaway writable layer, so the log replay a mount needs
        never writes the copy; :meth:`umount` removes the layer again."""
        where = Path(directory)
        with _opened(self._flow) as flow:
            flow.mount(self.name, where, rw=rw)
        self._mounted.append(where)
        return where

    def umount(self, directory: StrPath | None = None) -> Unmounted:
        """Unmount the snapshot: every mount of it, or only the one on ``directory``, and
        its throwaway layer with the last of them. Refused when nothing is mounted."""
        where = Path(directory) if directory is not None else None
        with _opened(self._flow) as flow:
            done = flow.umount(self.name, where)
        self._mounted = [m for m in self._mounted if where is not None and m != where]
        return done

    @overload
    def merge(
        self,
        *,
        wait: bool = ...,
        progress: Progress | None = ...,
        dry_run: Literal[False] = ...,
        force: bool = ...,
    ) -> SnapshotStatus: ...
    @overload
    def merge(
        self, *, wait: bool = ..., progress: Progress | None = ..., dry_run: bool, force: bool = ...
    ) -> SnapshotStatus | str: ...
    def merge(
        self,
        *,
        wait: bool = False,
        progress: Progress | None = None,
        dry_run: bool = False,
        force: bool = False,
    ) -> SnapshotStatus | str:
        """Roll the origin back to the snapshot's content and remove the snapshot (as
        ``lvconvert --merge``). Without ``wait`` this returns once the merge has started
        (state ``merging``; a later ``merge(wait=True)`` finishes it); with ``wait`` once it is
        done, calling ``progress`` with the percent merged at each look at the kernel, the
        last time with 100.0. ``dry_run``: the exact steps, as text, and nothing changed.
        ``force`` (zfs only): roll back even across later snapshots, which ZFS destroys."""

        def report(s: SnapshotStatus) -> None:
            if progress is not None:
                progress(100.0 if s.state is State.MERGED else s.merge_progress or 0.0)

        with _opened(self._flow) as flow:
            result = flow.merge(self.name, wait=wait, progress=report, dry_run=dry_run, force=force)
        return self._ended_with(result)

    @overload
    def discard(self, *, force: bool = ..., dry_run: Literal[False] = ...) -> SnapshotStatus: ...
    @overload
    def discard(self, *, force: bool = ..., dry_run: bool) -> SnapshotStatus | str: ...
    def discard(self, *, force: bool = False, dry_run: bool = False) -> SnapshotStatus | str:
        """Remove the snapshot and keep the origin's current content. Refused while the
        snapshot is open (mounted: :meth:`umount` first); ``force`` skips that check (the
        kernel may still refuse) and forgets a record whose LVM snapshot is already gone.
        ``dry_run``: the exact steps, as text, and nothing changed."""
        with _opened(self._flow) as flow:
            result = flow.discard(self.name, force=force, dry_run=dry_run)
        return self._ended_with(result)

    def _ended_with(self, result: SnapshotStatus | str) -> SnapshotStatus | str:
        if isinstance(result, SnapshotStatus):
            self.last_status = result
            self._ended = True
        return result

    def watch(
        self,
        *,
        extend_at: float,
        extend_by: Size,
        interval: float = 1.0,
        once: bool = False,
        report: Callable[[str], None] | None = None,
    ) -> SnapshotStatus:
        """Grow the COW by ``extend_by`` each time it is ``extend_at`` percent full (dm, lvm),
        as dmeventd's autoextend does; ``report`` gets a line for each look that acted.
        Returns when the snapshot is merged or discarded, or after one look if ``once``; a
        COW that filled is an :class:`OperationError`."""
        by = _bytes(extend_by, "extend_by")
        with _opened(self._flow) as flow:
            self.last_status = flow.watch(
                self.name,
                extend_at=extend_at,
                extend_by=by,
                interval=interval,
                once=once,
                report=report,
            )
        return self.last_status

    def keep(self) -> Snapshot:
        """Leave the snapshot, and what this handle mounted, as they are at the end of the
        ``with`` block: for a merge or discard later (``snapkit.get(name)``)."""
        self._kept = True
        return self

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Unmount what this handle mounted, then discard the snapshot if this handle
        created it -- whether or not the block raised. A failure here is raised (with the
        block's own error, if any, as its context): a snapshot left behind must not pass
        unseen."""
        if self._kept:
            return
        if self._mounted:
            self.umount()
        if self._owned and not self._ended:
            self.discard()


class SnapshotGroup:
    """A snapshot group snapkit recorded, by name: one snapshot per member filesystem, all
    at one point in time (``create([mp1, mp2], name=...)``). Its verbs act on every member;
    ``last_status.members`` holds each member's own status (``record.name`` is the member's
    id, ``G-SUFFIX``, which :func:`get` also opens, read-only: merge and discard are the
    group's). As a context manager it is a throwaway group, as :class:`Snapshot` is."""

    def __init__(
        self,
        name: str,
        *,
        flow: Flow | None = None,
        status: GroupStatus | None = None,
        owned: bool = False,
    ) -> None:
        self.name = name
        self.last_status = status
        self._flow = flow
        self._owned = owned
        self._ended = False
        self._mounted = False

    def __repr__(self) -> str:
        state = self.last_status.state if self.last_status else "?"
        return f"<snapkit.SnapshotGroup {self.name!r} {state}>"

    def status(self) -> GroupStatus:
        """Every member as the kernel shows it now, and the group's state (the members'
        common state, or ``mixed``)."""
        with _opened(self._flow) as flow:
            self.last_status = flow.group_status(self.name)
        return self.last_status

    def mount(self, directory: StrPath, *, rw: bool = False) -> list[Path]:
        """Every member under ``directory`` (which must exist), each on ``directory/SUFFIX``."""
        with _opened(self._flow) as flow:
            done = flow.mount_group(self.name, Path(directory), rw=rw)
        self._mounted = True
        return done

    def umount(self) -> list[Unmounted]:
        """Unmount every mounted member."""
        with _opened(self._flow) as flow:
            done = flow.umount_group(self.name)
        self._mounted = False
        return done

    def merge(
        self, *, wait: bool = False, progress: Progress | None = None, dry_run: bool = False
    ) -> GroupStatus | str:
        """Roll every member's origin back (every origin unmounted, for dm); each member's
        merge is planned, and so refused, before any starts. ``progress``: each member's
        percent, as :meth:`Snapshot.merge` gives it."""

        def report(s: SnapshotStatus) -> None:
            if progress is not None:
                progress(100.0 if s.state is State.MERGED else s.merge_progress or 0.0)

        with _opened(self._flow) as flow:
            result = flow.merge_group(self.name, wait=wait, progress=report, dry_run=dry_run)
        return self._ended_with(result)

    def discard(self, *, force: bool = False, dry_run: bool = False) -> GroupStatus | str:
        """Remove every member's snapshot; the origins keep their current content."""
        with _opened(self._flow) as flow:
            result = flow.discard_group(self.name, force=force, dry_run=dry_run)
        return self._ended_with(result)

    def _ended_with(self, result: GroupStatus | str) -> GroupStatus | str:
        if not isinstance(result, str):
            self.last_status = result
            self._ended = True
        return result

    def __enter__(self) -> SnapshotGroup:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._mounted:
            self.umount()
        if self._owned and not self._ended:
            self.discard()


# -- the verbs --------------------------------------------------------------------------------


Targets = list[StrPath] | tuple[StrPath, ...]
"""Several mount points: a snapshot group."""


@overload
def create(
    target: Targets,
    *,
    name: str | None = ...,
    method: str = ...,
    cow_size: Size | None = ...,
    cow_dir: StrPath | None = ...,
    chunk_size: Size = ...,
    pre: str | None = ...,
    post: str | None = ...,
    max_freeze: float = ...,
    command: Sequence[str] = ...,
    key_file: StrPath | None = ...,
    force: bool = ...,
    dry_run: Literal[False] = ...,
    flow: Flow | None = ...,
) -> SnapshotGroup: ...
@overload
def create(
    target: Targets,
    *,
    name: str | None = ...,
    method: str = ...,
    cow_size: Size | None = ...,
    cow_dir: StrPath | None = ...,
    chunk_size: Size = ...,
    pre: str | None = ...,
    post: str | None = ...,
    max_freeze: float = ...,
    command: Sequence[str] = ...,
    key_file: StrPath | None = ...,
    force: bool = ...,
    dry_run: bool,
    flow: Flow | None = ...,
) -> SnapshotGroup | str: ...
@overload
def create(
    target: StrPath,
    *,
    name: str | None = ...,
    method: str = ...,
    cow_size: Size | None = ...,
    cow_dir: StrPath | None = ...,
    chunk_size: Size = ...,
    pre: str | None = ...,
    post: str | None = ...,
    max_freeze: float = ...,
    command: Sequence[str] = ...,
    key_file: StrPath | None = ...,
    force: bool = ...,
    dry_run: Literal[False] = ...,
    flow: Flow | None = ...,
) -> Snapshot: ...
@overload
def create(
    target: StrPath,
    *,
    name: str | None = ...,
    method: str = ...,
    cow_size: Size | None = ...,
    cow_dir: StrPath | None = ...,
    chunk_size: Size = ...,
    pre: str | None = ...,
    post: str | None = ...,
    max_freeze: float = ...,
    command: Sequence[str] = ...,
    key_file: StrPath | None = ...,
    force: bool = ...,
    dry_run: bool,
    flow: Flow | None = ...,
) -> Snapshot | str: ...
def create(
    target: StrPath | Targets,
    *,
    name: str | None = None,
    method: str = DEFAULT_METHOD,
    cow_size: Size | None = None,
    cow_dir: StrPath | None = None,
    chunk_size: Size = "4K",
    pre: str | None = None,
    post: str | None = None,
    max_freeze: float = 10.0,
    command: Sequence[str] = (),
    key_file: StrPath | None = None,
    force: bool = False,
    dry_run: bool = False,
    flow: Flow | None = None,
) -> Snapshot | SnapshotGroup | str:
    """Take a point-in-time snapshot of ``target`` (a mounted filesystem or a block device)
    and record it as ``name`` (default: a fresh ``snap-XXXXXXXX``).

    ``method``: how (``auto`` takes the first that suits: lvm-thin, lvm, btrfs, dm, then
    freeze around ``command``); ``cow_size``: how much change it can hold (dm, dm-direct: the
    sparse COW file, default a quarter of the origin; lvm: the LV, default a fifth);
    ``cow_dir``: where dm's COW file goes; ``chunk_size``: 4K..512K; ``pre``/``post``: shell
    commands run before the freeze and after the thaw (``post`` even on failure);
    ``max_freeze``: seconds the filesystem may stay frozen; ``command``: the argv that takes
    the copy for ``freeze`` and ``remount-ro``; ``key_file``: for a filesystem on LUKS, the
    file cryptsetup unlocks the snapshot's header with (else the key is copied from the
    mapping's table, kernel to kernel). ``force``: accept a COW (dm, dm-direct) larger than
    the free space under ``cow_dir``, which the kernel drops if that filesystem fills; without
    it such a COW is refused before anything changes. ``dry_run``: the exact steps, as text,
    and nothing changed.

    Returns a :class:`Snapshot` whose ``last_status`` is the status right after creation; as a
    context manager it is discarded at the end of the ``with`` block (see :class:`Snapshot`).

    A list (or tuple) of mount points makes a *snapshot group*: one snapshot per member, all
    at one point in time, all or nothing (``dm``: every origin suspended together; ``freeze``:
    every member frozen, ``command`` run once). Returns a :class:`SnapshotGroup`.
    """
    chosen = name if name is not None else f"snap-{secrets.token_hex(4)}"
    if isinstance(target, list | tuple):
        if key_file is not None:
            raise UsageError("key_file is for one filesystem on dm-crypt, not a group")
        with _opened(flow) as f:
            made = f.create_group(
                [str(t) for t in target],
                name=chosen,
                method=method,
                cow_size=_bytes(cow_size, "cow_size") if cow_size is not None else None,
                cow_dir=Path(cow_dir) if cow_dir is not None else None,
                chunk_sectors=_chunk(chunk_size),
                pre=pre,
                post=post,
                max_freeze=max_freeze,
                dry_run=dry_run,
                command=tuple(command),
                force=force,
            )
        if isinstance(made, str):
            return made
        return SnapshotGroup(chosen, flow=flow, status=made, owned=True)
    with _opened(flow) as f:
        result = f.create(
            str(target),
            name=chosen,
            method=method,
            cow_size=_bytes(cow_size, "cow_size") if cow_size is not None else None,
            cow_dir=Path(cow_dir) if cow_dir is not None else None,
            chunk_sectors=_chunk(chunk_size),
            pre=pre,
            post=post,
            max_freeze=max_freeze,
            dry_run=dry_run,
            command=tuple(command),
            key_file=Path(key_file) if key_file is not None else None,
            force=force,
        )
    if isinstance(result, str):
        return result
    return Snapshot(chosen, flow=flow, status=result, owned=True)


snapshot = create
"""The same function as :func:`create`, named for a ``with`` statement:
``with snapkit.snapshot("/home") as snap: ...`` discards the snapshot at the block's end."""


def get(name: str, *, flow: Flow | None = None) -> Snapshot:
    """The handle of the existing snapshot ``name`` (its ``last_status`` read now); refused
    when snapkit recorded none by that name. A ``with`` block over it does not discard it."""
    with _opened(flow) as f:
        status = f.status(name)
    return Snapshot(name, flow=flow, status=status)


def group(name: str, *, flow: Flow | None = None) -> SnapshotGroup | None:
    """The handle of the snapshot group ``name`` (its ``last_status`` read now), or None when
    snapkit recorded no group by that name."""
    with _opened(flow) as f:
        if f.group(name) is None:
            return None
        status = f.group_status(name)
    return SnapshotGroup(name, flow=flow, status=status)


def list_snapshots(*, flow: Flow | None = None) -> list[SnapshotStatus]:
    """Every snapshot snapkit recorded, as the kernel shows it now (``status.record.name``)."""
    with _opened(flow) as f:
        return f.list()


@overload
def recover_all(
    *, finish: bool = ..., dry_run: Literal[False] = ..., flow: Flow | None = ...
) -> Recovery: ...
@overload
def recover_all(
    *, finish: bool = ..., dry_run: bool, flow: Flow | None = ...
) -> Recovery | str: ...
def recover_all(
    *, finish: bool = True, dry_run: bool = False, flow: Flow | None = None
) -> Recovery | str:
    """After a crash or a reboot: re-assemble every recorded snapshot and prepared device
    (device-mapper tables do not survive a reboot; the COW files do), drop what a create cut
    short, and resume merges that were under way -- and, with ``finish``, wait for them.
    Safe to call at every boot. The result's ``actions``, ``dropped`` and ``merging`` say
    what it did. (Not ``snapkit.recover``: that name is the module :mod:`snapkit.recover`,
    and a package attribute that names a submodule is replaced by it once it is imported.)"""
    with _opened(flow) as f:
        return f.recover(dry_run=dry_run, finish=finish)


@overload
def prepare_device(
    device: StrPath, name: str, *, dry_run: Literal[False] = ..., flow: Flow | None = ...
) -> PrepareResult: ...
@overload
def prepare_device(
    device: StrPath, name: str, *, dry_run: bool, flow: Flow | None = ...
) -> PrepareResult | str: ...
def prepare_device(
    device: StrPath, name: str, *, dry_run: bool = False, flow: Flow | None = None
) -> PrepareResult | str:
    """Wrap the unmounted block ``device`` in the dm linear device ``/dev/mapper/NAME``, once,
    so that the dm and dm-direct methods can snapshot it; mount that device from then on."""
    with _opened(flow) as f:
        return f.prepare(str(device), name, dry_run=dry_run)


def release_device(name: str, *, dry_run: bool = False, flow: Flow | None = None) -> str:
    """Undo :func:`prepare_device` (``/dev/mapper/NAME`` unmounted, no snapshot of it left);
    returns the device it was over, to mount directly again -- or, if ``dry_run``, the
    steps."""
    with _opened(flow) as f:
        return f.release(name, dry_run=dry_run)


@overload
def freeze(
    mountpoint: StrPath,
    command: Sequence[str],
    *,
    max_freeze: float = ...,
    dry_run: Literal[False] = ...,
) -> Frozen: ...
@overload
def freeze(
    mountpoint: StrPath, command: Sequence[str], *, max_freeze: float = ..., dry_run: bool
) -> Frozen | str: ...
def freeze(
    mountpoint: StrPath, command: Sequence[str], *, max_freeze: float = 10.0, dry_run: bool = False
) -> Frozen | str:
    """Freeze the filesystem at ``mountpoint``, run ``command`` (a SAN, hypervisor or cloud
    snapshot), thaw. A watchdog process thaws after ``max_freeze`` seconds even if this
    process dies. The result holds the command's ``result`` (exit code, output) and how long
    the ``window`` was; a failing command is not an error, its exit code is in the result."""
    from snapkit.flow import freeze as run

    return run(str(mountpoint), list(command), max_freeze=max_freeze, dry_run=dry_run)


# -- helpers ----------------------------------------------------------------------------------


@contextmanager
def _opened(flow: Flow | None) -> Iterator[Flow]:
    """``flow``, or the real host's, open for one call."""
    if flow is not None:
        yield flow
        return
    from snapkit.flow import Flow, real_host

    with real_host() as host:
        yield Flow(host)


def _bytes(size: Size, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int | str):
        raise UsageError(f"{what} must be bytes (an int) or a size such as '2G', not {size!r}")
    if isinstance(size, str):
        return parse_size(size)
    if size <= 0:
        raise ValidationError(
            f"the size {what}={size} is not positive", hint="give a positive size"
        )
    return size


def _chunk(size: Size) -> int:
    """A chunk size in sectors, from bytes or a string."""
    if isinstance(size, str):
        return parse_chunk(size)
    whole = _bytes(size, "chunk_size")
    if whole % SECTOR:
        raise UsageError(f"chunk_size {whole} is not a whole number of 512-byte sectors")
    return chunk_sectors(whole // SECTOR)


__all__ = [
    "OperationError",
    "Progress",
    "RefusedError",
    "Size",
    "SnapkitError",
    "Snapshot",
    "SnapshotGroup",
    "SnapshotStatus",
    "State",
    "UsageError",
    "create",
    "freeze",
    "get",
    "group",
    "list_snapshots",
    "prepare_device",
    "recover_all",
    "release_device",
    "snapshot",
]
