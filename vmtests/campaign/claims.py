"""The question's claims, each judged by the campaign rows that measure it (issue 14).

The question snapkit answers ("an atomic snapshot of a live, mounted filesystem") comes with
answers that make eleven claims. Each :class:`Claim` here names the scenarios that measure it
and a judge that turns their results into a verdict -- ``holds``, ``holds in part``, ``does
not hold`` or ``not measured`` -- with the figures behind it (verdicts, acknowledged writes
checked and lost, fsck, the ``clean`` check, the merge check, freeze windows). ``vmtest
claims`` runs the union of the scenarios through the ordinary campaign runner and writes
CLAIMS.md from :func:`render`; ``--from-report`` judges a report folder that exists already.

Pure: results in, text out. A claim whose rows did not run (or ran and were lost) is ``not
measured``, never guessed; a row's failure is named, with its reason, in the verdict.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vmtests.campaign.oracle import Result

HOLDS, PART, NOT, UNMEASURED = "holds", "holds in part", "does not hold", "not measured"


@dataclass(frozen=True)
class Finding:
    verdict: str
    why: str


@dataclass(frozen=True)
class Claim:
    number: int
    says: str  # the answers' claim, in our summary's words
    scenarios: tuple[str, ...]
    judge: Callable[[Mapping[str, Result]], Finding]


def _ran(results: Mapping[str, Result], ids: Sequence[str]) -> list[Result]:
    """The rows that gave a verdict on snapkit (not skipped, errored or lost)."""
    return [
        results[i]
        for i in ids
        if i in results and str(results[i].verdict) in ("pass", "fail", "caught", "refused")
    ]


def _all_pass(ids: Sequence[str], holds: str, fails: str) -> Callable[..., Finding]:
    def judge(results: Mapping[str, Result]) -> Finding:
        rows = _ran(results, ids)
        if not rows:
            return Finding(UNMEASURED, "none of its rows ran")
        bad = [r for r in rows if str(r.verdict) != "pass"]
        gaps = _missing(results, ids)
        if not bad:
            return (
                Finding(PART, f"where measured, {holds}{gaps}") if gaps else Finding(HOLDS, holds)
            )
        if len(bad) == len(rows):
            return Finding(NOT, f"{fails}: {_names(bad)}{gaps}")
        return Finding(PART, f"{holds}, except {_names(bad)}{gaps}")

    return judge


def _missing(results: Mapping[str, Result], ids: Sequence[str]) -> str:
    """The rows of a claim that gave no verdict, said after it: a verdict covers only what
    ran."""
    gone = [i for i in ids if i not in {r.id for r in _ran(results, ids)}]
    return f" (measured without {', '.join(f'`{i}`' for i in gone)}: not run)" if gone else ""


def _names(rows: Sequence[Result]) -> str:
    return "; ".join(f"`{r.id}` ({r.verdict}: {r.reason or 'see its row'})" for r in rows)


# -- the claims --------------------------------------------------------------------------------

LVM_ROWS = ("ext4-lvm-writer", "ext4-lvm-mixed", "xfs-lvm-writer", "ext3-lvm-writer")
HOOK_ROWS = (
    "ext2-lvm-writer",
    "ext3-lvm-writer",
    "ext4-lvm-writer",
    "reiserfs-lvm-writer",
    "btrfs-lvm-writer",
)
# claim 2 as the answer has it: plain lvcreate -s, without snapkit's FIFREEZE for btrfs
PLAIN_ROWS = (
    "ext4-lvm-plain-writer",
    "ext3-lvm-plain-writer",
    "reiserfs-lvm-plain-writer",
    "reiserfs-lvm-plain-churn",
)
PLAIN_CONTROL = "control-lvm-plain-btrfs-writer"  # btrfs under a bare lvcreate -s: caught
CLEAN_ROWS = ("ext3-lvm-writer", "ext3-lvm-mixed", "ext4-lvm-writer", "ext4-lvm-mixed")
XFS_ROWS = ("xfs-lvm-writer", "xfs-lvm-fio")
XFS_DIRTY = "valuable metadata changes in a log"  # what xfs_repair -n says of a log to replay
FREEZE_ROWS = ("xfs-freeze-lvm-writer", "ext4-freeze-lvm-writer")
REMOUNT_ROWS = ("ext4-remount-ro-writer", "xfs-remount-ro-writer", "btrfs-remount-ro-writer")
# the probe: the same remounts with a database held open for writing, as on a desktop
DESKTOP_ROWS = ("ext4-remount-ro-desktop", "xfs-remount-ro-desktop", "btrfs-remount-ro-desktop")
DM_ROWS = ("ext4-dm-writer", "xfs-dm-writer", "ext4-dm-direct-writer", "xfs-dm-direct-writer")
MERGE_ROWS = ("ext4-dm-writer", "xfs-dm-writer", "btrfs-dm-writer", "ext4-dm-direct-writer")
DISCARD_CONTROL = "control-discard-mounted-ext4-writer"
NATIVE_ROWS = ("btrfs-btrfs-native-writer", "zfs-zfs-native-writer")
DB_ROWS = ("ext4-freeze-lvm-sqlite", "ext4-lvm-sqlite", "xfs-dm-sqlite")
# synchronous=OFF, the case that may lose acknowledged commits, under a freeze, an LVM suspend
# and a dm suspend; and the FULL database under a --pre hook that checkpoints its WAL.
DB_OFF_ROWS = ("ext4-freeze-lvm-sqlite-off", "ext4-lvm-sqlite-off", "xfs-dm-sqlite-off")
DB_PRE_ROWS = ("ext4-lvm-sqlite-pre",)
WAL_CONTROL = "control-drop-wal-ext4-sqlite"


def _clean(results: Mapping[str, Result]) -> Finding:
    rows = [r for r in _ran(results, CLEAN_ROWS) if r.checks.get("clean") is not None]
    if not rows:
        return Finding(UNMEASURED, "no ext3/ext4 LVM row recorded the journal check")
    dirty = [r for r in rows if not r.checks.get("clean")]
    if not dirty:
        return Finding(HOLDS, "no copy needed a journal recovery (needs_recovery unset)")
    return Finding(PART if len(dirty) < len(rows) else NOT, f"needs recovery: {_names(dirty)}")


def _merge(results: Mapping[str, Result]) -> Finding:
    rows = [r for r in _ran(results, MERGE_ROWS) if r.checks.get("merge") is not None]
    if not rows:
        return Finding(UNMEASURED, "no dm row merged")
    bad = [r for r in rows if not r.checks.get("merge")]
    if not bad:
        return Finding(
            HOLDS,
            "`snapshot merge --wait` waits for X == Z in `X/Y Z`; after it the origin's tree "
            "equals the snapshot's in every row",
        )
    return Finding(NOT, f"the origin differs from the snapshot after X == Z: {_names(bad)}")


def _control(control: str, holds: str) -> Callable[[Mapping[str, Result]], Finding]:
    def judge(results: Mapping[str, Result]) -> Finding:
        rows = _ran(results, (control,))
        if not rows:
            return Finding(UNMEASURED, f"`{control}` did not run")
        row = rows[0]
        if str(row.verdict) == "caught":
            by = ", ".join(row.caught_by) or "the oracle"
            return Finding(HOLDS, f"{holds}: `{control}` caught by {by}")
        return Finding(NOT, f"`{control}` was not caught ({row.verdict}: {row.reason})")

    return judge


def _remount(results: Mapping[str, Result]) -> Finding:
    found = _all_pass(REMOUNT_ROWS, "every row's copy is consistent", "inconsistent")(results)
    if found.verdict != HOLDS:
        return found
    probes = [r for r in _ran(results, DESKTOP_ROWS) if r.busy]
    if not probes:
        return Finding(
            PART,
            "every row's copy is consistent, on a filesystem with no file open for writing; "
            "how often a busy desktop refuses the remount was not measured"
            + _missing(results, DESKTOP_ROWS),
        )
    tries = sum(r.busy.get("tries", 0) for r in probes)
    refused = sum(r.busy.get("refused", 0) for r in probes)
    return Finding(
        PART if refused else HOLDS,
        "every row's copy is consistent, but with a database held open for writing (the "
        f"`desktop` rows) the remount was refused (EBUSY) in {refused} of {tries} tries: "
        "the kernel refuses remount-ro while any file is open for writing, which on the busy "
        "desktop of the question is the rule; snapkit's remount-ro then changes nothing and "
        "says so" + _missing(results, DESKTOP_ROWS),
    )


def _lvm_hook(results: Mapping[str, Result]) -> Finding:
    """Claim 2: snapkit's LVM rows (which FIFREEZE btrfs) and a bare ``lvcreate -s``, judged
    apart: the claim is about the kernel hook, which only the plain rows test alone. btrfs's
    plain copy is a control: a dm suspend does not freeze it on 6.1, so it must be caught."""
    ours = _all_pass(HOOK_ROWS, "snapkit's LVM snapshots are consistent", "inconsistent")(results)
    plain = _all_pass(
        PLAIN_ROWS,
        "a bare `lvcreate -s` gives consistent snapshots of ext3, ext4 and ReiserFS",
        "inconsistent under a bare `lvcreate -s`",
    )(results)
    ctl = _ran(results, (PLAIN_CONTROL,))
    if not ctl:
        return Finding(PART, f"{plain.why}; {ours.why}; btrfs under a bare lvcreate -s not run")
    row = ctl[0]
    if str(row.verdict) != "caught":
        said = f"{plain.why}, and of btrfs too (`{PLAIN_CONTROL}` was not caught); {ours.why}"
        return Finding(plain.verdict, said)
    return Finding(
        PART,
        f"{plain.why}, but not of btrfs: a dm suspend does not freeze btrfs on this kernel, and "
        f"the bare copy lost {row.acked_writes_lost} of {row.acked_writes_checked} "
        f"acknowledged writes (`{PLAIN_CONTROL}` caught by {', '.join(row.caught_by)}); "
        f"{ours.why}, because snapkit freezes btrfs itself around LVM's suspend",
    )


def _xfs(results: Mapping[str, Result]) -> Finding:
    """Claim 4 is claim 3 for XFS: consistent, and clean before any mount? An XFS copy is
    clean when ``xfs_repair -n`` accepts its log without a replay."""
    found = _all_pass(XFS_ROWS, "XFS LVM snapshots are consistent", "inconsistent")(results)
    if found.verdict != HOLDS:
        return found
    known = [r for r in _ran(results, XFS_ROWS) if r.log_clean is not None]
    if not known:
        return Finding(HOLDS, f"{found.why}; whether their logs were clean was not recorded")
    dirty = [r for r in known if not r.log_clean]
    if not dirty:
        return Finding(HOLDS, f"{found.why}, and no log needed a replay (`xfs_repair -n` clean)")
    return Finding(
        PART,
        f"{found.why} once a mount replays the log, but it is not clean as ext's is: "
        f'`xfs_repair -n` found a log to replay ("{XFS_DIRTY}") in {len(dirty)} of '
        f"{len(known)} snapshots, as a frozen XFS leaves it; ext3/ext4 copies have no journal "
        "to recover (claim 3)",
    )


def _wal(rows: Sequence[Result]) -> str:
    """The snapshots' WAL sizes, the figure that shows what a checkpoint hook changes."""
    sizes = [int(r.database.get("wal_bytes", -1)) for r in rows if r.database]
    return "/".join(f"{b // 1024} KiB" if b >= 0 else "none" for b in sizes) or "not recorded"


def _pre_hook_said(h: Mapping[str, Any]) -> str:
    if "error" in h or not h:
        return f"did not report: {h.get('error', 'nothing recorded')}"
    before, after = int(h.get("wal_before", -1)), int(h.get("wal_after", -1))
    return f"the WAL went from {before // 1024} KiB to {after // 1024} KiB, busy {h.get('busy')}"


def _databases(results: Mapping[str, Result]) -> Finding:
    full, off, pre = (_ran(results, ids) for ids in (DB_ROWS, DB_OFF_ROWS, DB_PRE_ROWS))
    control = _control(WAL_CONTROL, "a copy without the -wal file loses commits")(results)
    if not full:
        return Finding(UNMEASURED, "no SQLite row ran")
    bad = [r for r in (*full, *off, *pre) if str(r.verdict) != "pass"]
    if bad:
        return Finding(HOLDS, f"a frozen snapshot lost acknowledged transactions: {_names(bad)}")
    lost = sum(r.acked_writes_lost for r in off)
    checked = sum(r.acked_writes_checked for r in off)
    said = [
        "for SQLite in WAL mode with synchronous=FULL, every transaction acknowledged before "
        "the snapshot is in it and `PRAGMA integrity_check` is ok (the WAL is replayed on "
        f"open; the snapshots' WAL files held {_wal(full)})",
    ]
    if off:
        said.append(
            f"with synchronous=OFF too: {checked} acknowledged commits checked, {lost} lost, "
            "because a freeze or a dm suspend writes back the page cache, where OFF's commits "
            "already are; OFF loses commits only when the machine itself crashes, which a "
            "snapshot is not"
        )
    if pre:
        hooks = "; ".join(_pre_hook_said(r.database.get("pre_hook", {})) for r in pre)
        said.append(
            "a `--pre` hook that checkpoints the WAL (`PRAGMA wal_checkpoint(TRUNCATE)`) leaves "
            f"the snapshot's WAL at {_wal(pre)} (hook: {hooks}), so the database file alone "
            "is nearly whole, which a file-level backup needs"
        )
    said.append(
        f"what loses transactions is a file-level copy that leaves out the -wal file "
        f"({control.why}). An application that acknowledges before it writes would need its "
        "own quiesce, which no freeze gives"
    )
    gaps = _missing(results, (*DB_ROWS, *DB_OFF_ROWS, *DB_PRE_ROWS))
    return Finding(NOT, "; ".join(said) + gaps)


CLAIMS: tuple[Claim, ...] = (
    Claim(
        1,
        "`lvcreate -s` finds the mounted filesystem and checkpoints it through a kernel hook, "
        "so the snapshot is consistent and mountable",
        LVM_ROWS,
        _all_pass(
            LVM_ROWS,
            "every LVM snapshot mounts, fscks clean and holds every acknowledged write",
            "inconsistent LVM snapshots",
        ),
    ),
    Claim(
        2,
        'the ext family supports this hook; "ReiserFS probably also", and btrfs "probably '
        'does as well"',
        (*HOOK_ROWS, *PLAIN_ROWS, PLAIN_CONTROL),
        _lvm_hook,
    ),
    Claim(3, 'on ext3 and ext4 the LVM snapshot "is always clean"', CLEAN_ROWS, _clean),
    Claim(
        4,
        'XFS "has the same support"',
        XFS_ROWS,
        _xfs,
    ),
    Claim(
        5,
        "`xfs_freeze -f`, then the snapshot, then `xfs_freeze -u` gives a safe state",
        FREEZE_ROWS,
        _all_pass(FREEZE_ROWS, "a copy taken inside the freeze is consistent", "inconsistent"),
    ),
    Claim(
        6,
        "`mount -o remount,ro`, then the snapshot, then remount rw also works",
        (*REMOUNT_ROWS, *DESKTOP_ROWS),
        _remount,
    ),
    Claim(
        7,
        "raw device-mapper, part one: wrap in `linear`, swap in `snapshot` (or "
        "`snapshot-origin` + `snapshot`) with suspend/reload/resume, the COW on a loop device; "
        "`blockdev --setro` on the device below protects it without affecting the dm devices",
        DM_ROWS,
        _all_pass(
            DM_ROWS,
            "both recipes give consistent snapshots, and dm-direct's base is "
            "read-only while its origin takes writes",
            "inconsistent",
        ),
    ),
    Claim(
        8,
        "raw device-mapper, part two: the merge is complete when X equals Z in `X/Y Z`",
        MERGE_ROWS,
        _merge,
    ),
    Claim(
        9,
        'discarding without unmounting "will likely corrupt your filesystem"',
        (DISCARD_CONTROL,),
        _control(DISCARD_CONTROL, "dropping the COW under a mounted filesystem corrupts it"),
    ),
    Claim(
        10,
        "if the filesystem has built-in snapshots (btrfs, ZFS), use those instead",
        NATIVE_ROWS,
        _all_pass(
            NATIVE_ROWS,
            "btrfs and ZFS native snapshots are consistent and merge back",
            "inconsistent",
        ),
    ),
    Claim(
        11,
        "freeze/thaw is enough outside databases, but for databases \"you still won't have a "
        'transaction-complete backup"',
        (*DB_ROWS, *DB_OFF_ROWS, *DB_PRE_ROWS, WAL_CONTROL),
        _databases,
    ),
)


def scenario_ids() -> list[str]:
    """Every row the claims read, once, in order."""
    return list(dict.fromkeys(i for c in CLAIMS for i in c.scenarios))


def _figures(r: Result) -> str:
    bits = [str(r.verdict)]
    if r.acked_writes_checked:
        bits.append(
            f"{r.acked_writes_checked} acknowledged writes checked, {r.acked_writes_lost} lost"
        )
    if r.fsck_ok is not None:
        bits.append(f"fsck {'clean' if r.fsck_ok else 'errors'}")
    for name in ("clean", "merge"):
        if r.checks.get(name) is not None:
            bits.append(f"{name} {'ok' if r.checks[name] else 'failed'}")
    if r.freeze_window_ms is not None:
        bits.append(f"longest stall {r.freeze_window_ms:g} ms")
    if r.caught_by:
        bits.append(f"caught by {', '.join(r.caught_by)}")
    if str(r.verdict) not in ("pass", "caught") and r.reason:
        bits.append(r.reason)
    return "; ".join(bits)


def judge(results: Sequence[Result]) -> list[tuple[Claim, Finding]]:
    by_id = {r.id: r for r in results}
    return [(claim, claim.judge(by_id)) for claim in CLAIMS]


def render(results: Sequence[Result], *, command: str, kernel: str, seconds: float | None) -> str:
    """CLAIMS.md: one section per claim, its verdict, why, and every row behind it."""
    by_id = {r.id: r for r in results}
    took = f", in {seconds / 60:.0f} min" if seconds is not None else ""
    out = [
        "# The question's claims, measured",
        "",
        f"Written by `{command}` (kernel {kernel}{took}). Each verdict is read from the "
        "campaign rows named under it, with their figures; a row that did not run makes its "
        "claim `not measured`. Replay a row with `vmtest run --scenario ID --seed SEED`.",
        "",
        "| # | claim | verdict |",
        "| --- | --- | --- |",
    ]
    found = judge(results)
    out += [f"| {c.number} | {c.says} | **{f.verdict}** |" for c, f in found]
    for claim, finding in found:
        out += [
            "",
            f"## {claim.number}. {claim.says}",
            "",
            f"**{finding.verdict}**: {finding.why}.",
            "",
        ]
        for sid in claim.scenarios:
            row = by_id.get(sid)
            line = _figures(row) + f" (seed {row.seed})" if row else "did not run"
            out.append(f"- `{sid}`: {line}")
    return "\n".join(out) + "\n"


def render_html(results: Sequence[Result]) -> str:
    """report.html's claims section: the verdict table, and under each claim why, with its
    rows linked to their details further down the report."""
    by_id = {r.id: r for r in results}
    found = judge(results)
    rows = "".join(
        f"<tr><td>{c.number}</td><td>{html.escape(c.says)}</td><td><b>{f.verdict}</b></td></tr>"
        for c, f in found
    )
    parts = [
        "<h2>The question's claims</h2><p>Each verdict is read from the rows under it "
        "(CLAIMS.md has the same text).</p>",
        f"<table class='grid'><tr><th>#</th><th>claim</th><th>verdict</th></tr>{rows}</table>",
    ]
    for claim, finding in found:
        items = "".join(
            f"<li><a href='#{html.escape(sid)}'>{html.escape(sid)}</a>: "
            + html.escape(_figures(by_id[sid]) if sid in by_id else "did not run")
            + "</li>"
            for sid in claim.scenarios
        )
        parts.append(
            f"<details><summary>{claim.number}. <b>{finding.verdict}</b></summary>"
            f"<p>{html.escape(finding.why)}.</p><ul>{items}</ul></details>"
        )
    return "".join(parts)


__all__ = ["CLAIMS", "Claim", "Finding", "judge", "render", "render_html", "scenario_ids"]
