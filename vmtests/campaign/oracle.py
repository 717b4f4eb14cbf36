"""The oracle's verdict: turn what the guest measured into pass, fail or caught.

The checks themselves run in the guest (guest/check.py, guest/campaign/verify.py) right after the
snapshot, because the snapshot device exists only there:

- **fsck** of the bare snapshot device: ext2/3/4 ``e2fsck -fn``, xfs ``xfs_repair -n``, btrfs
  ``btrfs check --readonly``; reiserfs ``reiserfsck --check`` on a throwaway layer, since it
  replays the journal before it checks. A snapshot taken under a freeze has a clean journal,
  so fsck must pass as is; a dirty journal (a crash-consistent copy) is a failure of the
  method. ext2 has no journal: under a freeze it is written back whole, so it too must pass.
- **clean** (ext3, ext4): the superblock has no ``needs_recovery`` before anything mounts it.
- **mount**: the snapshot is mounted read-only through a throwaway writable layer, a transient
  dm snapshot (store ``N``) with its own small COW on a tmpfs loop device. Why this and not
  ``ro,noload``/``norecovery``: skipping the journal shows metadata as it was *before* replay,
  which is not what anyone restoring the snapshot would see; replaying into a layer shows exactly
  that, works the same for ext4, xfs (``nouuid``) and btrfs (its log tree), and still never
  writes one byte to the snapshot device itself.
- **ledger**: every write acknowledged before the snapshot began is present and intact; no
  write that began after it ended is present; writes in the window are old or new, never torn.
  A write in flight to a new file region that reads back as zeros is counted apart, as a
  *hole*: allowed only for btrfs-native, whose point in time is a transaction commit, not a
  freeze (``vmtests/guest/campaign/verify.py`` says why and what was measured); a failure elsewhere.
- **fio**: fio re-reads its acknowledged jobs on the snapshot with ``verify=crc32c``.
- **sqlite**: the database, copied off the snapshot with its WAL, opens, passes
  ``PRAGMA integrity_check``, and its commits alone pass the ledger's questions
  (``vmtests/guest/campaign/sqlitedb.py``); the ``drop-wal`` control is a copy without the WAL.
- **merge**: after ``snapkit snapshot merge``, the origin's tree digest equals the snapshot's.

A real scenario passes when every check that ran passed and at least one acknowledged write was
checked. A negative control is *caught* when some check failed; the report names which.

A row whose guest kernel cannot mount its filesystem (reiserfs on a kernel without it) is
``refused``, with the reason the guest gave; it measured nothing and fails nothing.

A crash of the harness itself (host side: a bug in this package, a Python too old for it) says
nothing about snapkit, so it is its own verdict, ``error``, never ``fail``: its reason names the
exception (``harness error: TypeError: ...``) instead of hiding it in a log.

A VM lost on the way (QEMU gone, a panic, a hard timeout: a ``VmError``) says nothing about
snapkit, so it is its own verdict, ``lost``, never ``fail``: results.json says ``lost``, junit
an ``<error>`` (the test could not run), and the exit code is still 1.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from vmtests.campaign.scenarios import Scenario


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    CAUGHT = "caught"
    SKIPPED = "skipped"  # not run: the method is not in snapkit yet (the reason says so)
    REFUSED = "refused"  # not run: the guest's kernel cannot host the row (the reason says why)
    ERROR = "error"  # the harness itself crashed: no verdict on snapkit (the reason says why)
    LOST = "lost"  # the VM was lost before the guest printed a result: no verdict on snapkit

    @property
    def ok(self) -> bool:
        return self in (Verdict.PASS, Verdict.CAUGHT, Verdict.SKIPPED, Verdict.REFUSED)

    @property
    def ran(self) -> bool:
        """Whether the scenario was run at all (a skipped or refused row was not)."""
        return self not in (Verdict.SKIPPED, Verdict.REFUSED)


@dataclass(frozen=True)
class Result:
    """One row of results.json."""

    id: str
    fs: str
    method: str
    workload: str
    control: bool
    control_kind: str
    verdict: Verdict
    reason: str
    fsck_ok: bool | None
    acked_writes_checked: int
    acked_writes_lost: int
    torn: int
    future_writes: int
    window_new: int
    window_old: int
    freeze_window_ms: float | None
    snapshot_window_ms: float | None
    duration_s: float
    seed: int
    repro: str
    caught_by: tuple[str, ...] = ()
    attempts: int = 0
    catch_rate: float | None = None
    holes: int = 0
    refused: int = 0  # writes the method refused, as it documents (vmtests/guest/refusal.py)
    checks: dict[str, bool | None] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    artifacts: str = ""
    kernel: dict[str, str] = field(default_factory=dict)  # {"spec": ..., "release": uname -r}
    # A database row's reading of its snapshot (sqlitedb.Reading.summary(): wal_bytes,
    # transactions, integrity; pre_hook for sqlite-pre), which the claims cite.
    database: dict[str, Any] = field(default_factory=dict)
    # A probe row's count of creates refused as documented ({"tries": n, "refused": k}).
    busy: dict[str, int] = field(default_factory=dict)
    # XFS: was the snapshot's log clean before any mount (xfs_repair -n)? None: not XFS, or
    # fsck failed for another reason. Recorded, not judged: a frozen XFS keeps a log to replay.
    log_clean: bool | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["verdict"] = str(self.verdict)
        out["caught_by"] = list(self.caught_by)
        out["errors"] = list(self.errors)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["verdict"] = Verdict(values["verdict"])
        values["caught_by"] = tuple(values.get("caught_by", ()))
        values["errors"] = tuple(values.get("errors", ()))
        return cls(**values)


def repro_command(scenario: Scenario) -> str:
    return f"vmtest run --scenario {scenario.id} --seed {scenario.effective_seed}"


def _base(scenario: Scenario, duration: float) -> dict[str, Any]:
    return {
        "id": scenario.id,
        "fs": scenario.fs,
        "method": scenario.method,
        "workload": scenario.workload,
        "control": scenario.is_control,
        "control_kind": scenario.control,
        "seed": scenario.effective_seed,
        "repro": repro_command(scenario),
        "duration_s": round(duration, 2),
    }


def _unmeasured(
    scenario: Scenario,
    duration: float,
    verdict: Verdict,
    reason: str,
    errors: tuple[str, ...] = (),
    artifacts: str = "",
) -> Result:
    """A result with nothing measured: skipped, refused, lost, or the harness crashed."""
    return Result(
        **_base(scenario, duration),
        verdict=verdict,
        reason=reason,
        fsck_ok=None,
        acked_writes_checked=0,
        acked_writes_lost=0,
        torn=0,
        future_writes=0,
        window_new=0,
        window_old=0,
        freeze_window_ms=None,
        snapshot_window_ms=None,
        errors=errors,
        artifacts=artifacts,
    )


def skipped(scenario: Scenario, reason: str) -> Result:
    return _unmeasured(scenario, 0.0, Verdict.SKIPPED, reason)


def judge(scenario: Scenario, raw: dict[str, Any], duration: float, artifacts: str = "") -> Result:
    """The verdict on one guest result (the JSON vmtests/guest/campaign/scenario.py printed).

    A guest that found its kernel unable to host the row (``unsupported``: no module for the
    filesystem) measured nothing: ``refused``, with its reason, which the claims cite."""
    if raw.get("unsupported"):
        reason = f"refused: {raw['unsupported']}"
        return _unmeasured(scenario, duration, Verdict.REFUSED, reason, artifacts=artifacts)
    checks: dict[str, bool | None] = dict(raw.get("checks", {}))
    counts: dict[str, Any] = raw.get("counts") or {}
    errors = tuple(str(e) for e in raw.get("errors", ()) if e)
    busy = {k: int(v) for k, v in (raw.get("busy") or {}).items()}
    if raw.get("refused_create") and not errors and not scenario.is_control:
        # A probe (the desktop workload) whose method refused every try, or a create snapkit
        # refuses by design (a frozen JFS): as documented, nothing to judge but why (and the
        # probe's count), which the claims and the report cite.
        reason = (
            f"refused: {scenario.snapkit_method} was refused in {busy.get('refused')} of "
            f"{busy.get('tries')} tries while files were open for writing "
            f"({raw['refused_create']})"
            if busy
            else f"refused by snapkit: {raw['refused_create']}"
        )
        result = _unmeasured(scenario, duration, Verdict.REFUSED, reason, artifacts=artifacts)
        return dataclasses.replace(result, busy=busy)
    failed = tuple(name for name, ok in checks.items() if ok is False)
    checked = int(counts.get("acked_checked", 0))
    attempts = int(raw.get("attempts", 0))
    if scenario.is_control:
        # A control whose own naive copy failed (its `snapshot` check) made nothing to judge:
        # that is the harness failing, not the oracle catching the fault it exists for.
        caught = tuple(name for name in failed if name != "snapshot")
        verdict = Verdict.CAUGHT if caught else Verdict.FAIL
        reason = (
            f"caught by {', '.join(caught)} on attempt {attempts}"
            if caught
            else f"not caught in {attempts} attempt(s)"
        )
        if not caught and errors:
            reason += f"; errors: {'; '.join(errors)}"
        failed = caught
    elif failed or errors:
        verdict = Verdict.FAIL
        reason = "; ".join([f"check failed: {', '.join(failed)}"] * bool(failed) + list(errors))
    elif checked == 0:
        verdict, reason = Verdict.FAIL, "no acknowledged write was checked"
    elif "ledger" not in checks:
        verdict, reason = Verdict.FAIL, "the ledger was never verified"
    else:
        verdict, reason = Verdict.PASS, ""
    return Result(
        **_base(scenario, duration),
        verdict=verdict,
        reason=reason,
        fsck_ok=checks.get("fsck"),
        acked_writes_checked=checked,
        acked_writes_lost=int(counts.get("acked_lost", 0)),
        torn=int(counts.get("torn", 0)),
        holes=int(counts.get("holes", 0)),
        refused=int(raw.get("refused", 0)),
        future_writes=int(counts.get("future", 0)),
        window_new=int(counts.get("window_new", 0)),
        window_old=int(counts.get("window_old", 0)),
        freeze_window_ms=raw.get("freeze_window_ms"),
        snapshot_window_ms=raw.get("window_ms"),
        caught_by=failed if scenario.is_control else (),
        attempts=attempts,
        catch_rate=(
            round((1 if failed else 0) / attempts, 3) if scenario.is_control and attempts else None
        ),
        checks=checks,
        errors=errors,
        artifacts=artifacts,
        database={k: v for k, v in (raw.get("sqlite") or {}).items() if k != "counts"},
        busy=busy,
        log_clean=raw.get("log_clean"),
    )


def no_result(scenario: Scenario, duration: float, message: str, artifacts: str = "") -> Result:
    """The VM ran but the guest runner printed nothing: a failure for scenarios and controls."""
    raw = {"checks": {"vm": False} if not scenario.is_control else {}, "errors": [message]}
    result = judge(scenario, raw, duration, artifacts)
    if scenario.is_control:
        result = Result(**{**result.__dict__, "verdict": Verdict.FAIL, "reason": message})
    return result


def harness_error(
    scenario: Scenario, exc: BaseException, duration: float = 0.0, artifacts: str = ""
) -> Result:
    """The harness crashed while running ``scenario``: ``error``, with the exception's type and
    first line of message as the reason, so the summary's note column names the cause."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = f"harness error: {type(exc).__name__}" + (f": {message}" if message else "")
    return _unmeasured(scenario, duration, Verdict.ERROR, reason, (reason,), artifacts)


def lost_vm(scenario: Scenario, duration: float, message: str, artifacts: str = "") -> Result:
    """The VM was lost (a ``VmError``) before a result: ``lost``, apart from a failing scenario,
    for real scenarios and controls alike."""
    reason = message.splitlines()[0] if message.strip() else "VM lost"
    return _unmeasured(scenario, duration, Verdict.LOST, reason, (message,), artifacts)
