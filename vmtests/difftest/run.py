"""``vmtest difftest``: the offline dm-snapshot model against the real kernel, history by history.

Hypothesis draws histories (``vmtests.difftest.ops``); each runs in one long-lived guest
executor (``vmtests.guest.difftest.dmexec``, one round trip per history) and in snapkit's model
on the host (``vmtests.difftest.model``). Both answer every operation with its result (a read's
digest, an errno), the status line of every dm device, and at check points (after each reload
and merge, and at the end) the digest of every device's whole content and of every backing
file, COWs included: equal digests are equal bytes. The first step where anything differs is
a mismatch; hypothesis shrinks it, and the smallest history is written as a JSON reproducer
that ``vmtest difftest --replay FILE`` runs again on both sides.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vmtests import guest
from vmtests.difftest.model import ModelSide, Observation
from vmtests.difftest.ops import History, Merge, Read, Reload, histories, well_formed
from vmtests.vm.session import Session

EXECUTOR = guest.command("difftest.dmexec")
GUEST_ROOT = "/tmp/difftest"
SHRINK_BUDGET = 150  # histories run while shrinking; then the smallest one so far is kept


class ExecutorError(RuntimeError):
    """The guest executor failed on its own (not a model/kernel difference)."""


class GuestExecutor:
    """The guest side: one ``dmexec.py`` process, a JSON line each way per history."""

    def __init__(
        self, session: Session, timeout: float = 86400.0, kernel: dict[str, str] | None = None
    ) -> None:
        self.session = session
        self.kernel = kernel or {}  # spec and release of the guest's kernel, for the report
        self.proc = session.channel.spawn(EXECUTOR, stdin=True, timeout=timeout)
        self._buf = bytearray()
        self._err = bytearray()
        if not self._line(120.0).get("ready"):
            raise ExecutorError("the guest executor did not say it was ready")

    def _line(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            header, data = self.session.channel.next_frame(
                self.proc.rid, deadline, "while running the difftest executor"
            )
            if header.get("stream") == "stdout":
                self._buf.extend(data)
            elif header.get("stream") == "stderr":
                self._err.extend(data)
            elif "exit" in header:
                err = self._err.decode(errors="replace")[-2000:]
                raise ExecutorError(f"the guest executor exited {header['exit']}: {err}")
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, history: History, timeout: float = 300.0) -> list[Observation]:
        request = {**history.to_json(), "checks": check_points(history)}
        self.proc.write(json.dumps(request).encode() + b"\n")
        answer = self._line(timeout)
        if "error" in answer:
            raise ExecutorError(f"the guest executor failed: {answer['error']}")
        obs: list[Observation] = answer["obs"]
        return obs

    def fetch(self, name: str) -> bytes:
        return self.session.get(f"{GUEST_ROOT}/{name}")


def check_points(history: History) -> list[int]:
    """Whole-content checks after every reload and merge (state read back from bytes) and at
    the end; reads and status lines are compared after every operation."""
    last = len(history.ops) - 1
    return [n for n, op in enumerate(history.ops) if isinstance(op, Reload | Merge) or n == last]


@dataclass
class Counts:
    results: int = 0  # operation results (errno words, merge outcomes)
    reads: int = 0  # read digests
    statuses: int = 0  # dm status lines
    device_hashes: int = 0  # whole-device digests, read through dm
    cow_images: int = 0  # COW files, byte for byte (by digest)
    origin_images: int = 0  # origin backing files
    merges_stopped_midway: int = 0  # interrupted merges that stopped after some, not all

    def add(self, other: Counts) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


@dataclass(frozen=True)
class Mismatch:
    step: int
    what: str  # "result", "status s0", "device s1", "file cow0", ...
    model: str
    kernel: str


@dataclass
class Outcome:
    history: History
    mismatches: list[Mismatch] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)

    @property
    def failed(self) -> bool:
        return bool(self.mismatches)


def compare(history: History, kernel: list[Observation]) -> Outcome:
    """Replay ``history`` on the model beside the kernel's answers; stop at the first step
    that differs, so the outcome names where the two sides parted."""
    model = ModelSide(history)
    out = Outcome(history)
    c = out.counts
    for step, (op, obs) in enumerate(zip(history.ops, kernel, strict=True)):
        try:
            got = model.apply(op, obs.get("check"))
        except Exception as exc:  # a model that crashes where the kernel answered is a finding
            got = f"model raised {type(exc).__name__}: {exc}"
        model.note_invalid()
        c.merges_stopped_midway = model.stopped_midway
        diffs = [("result", got, obs["result"])]
        c.results += 1
        c.reads += isinstance(op, Read)
        mine, theirs = model.statuses(), obs["status"]
        for key in sorted(mine.keys() | theirs.keys()):
            diffs.append((f"status {key}", mine.get(key, "-"), theirs.get(key, "-")))
            c.statuses += 1
        if "check" in obs:
            diffs.extend(_check_diffs(model, model.check(), obs["check"], c))
            if model.lost_merge:
                diffs.append(("merge state", "a batch boundary", "none of them"))
        out.mismatches = [Mismatch(step, w, m, k) for w, m, k in diffs if m != k]
        if out.mismatches:
            out.history = History(history.origin_sectors, history.ops[: step + 1])
            break
    return out


def _check_diffs(
    model: ModelSide, mine: Observation, theirs: Observation, c: Counts
) -> list[tuple[str, str, str]]:
    diffs = []
    for key in sorted(mine["devices"].keys() | theirs["devices"].keys()):
        diffs.append(
            (f"device {key}", mine["devices"].get(key, "-"), theirs["devices"].get(key, "-"))
        )
        c.device_hashes += 1
    for key in sorted(mine["files"].keys() | theirs["files"].keys()):
        group, what = "files", f"file {key}"
        if key.startswith("cow") and int(key[3:]) in model.dead:
            if model.kind(int(key[3:])) == "N":
                continue
            group, what = "heads", f"file {key} header (store invalid)"
        diffs.append((what, mine[group].get(key, "-"), theirs[group].get(key, "-")))
        c.cow_images += key.startswith("cow")
        c.origin_images += key == "origin"
    return diffs


def run_history(executor: GuestExecutor, history: History) -> Outcome:
    return compare(history, executor.run(history))


# -- search ---------------------------------------------------------------------------------


@dataclass
class Report:
    seed: int
    examples: int = 0
    shrink_runs: int = 0
    seconds: float = 0.0  # the whole search, shrinking included
    search_seconds: float = 0.0  # up to the first mismatch (or the end): what the rate uses
    counts: Counts = field(default_factory=Counts)
    found: Outcome | None = None
    reproducer: Path | None = None
    confirmed: bool | None = None  # did the shrunk history fail again when run alone?

    def to_json(self) -> dict[str, Any]:
        found = self.found
        return {
            "examples": self.examples,
            "mismatches": 0 if found is None else 1,
            "seed": self.seed,
            "seconds": round(self.seconds, 1),
            "examples_per_minute": round(60 * self.examples / self.search_seconds, 1)
            if self.search_seconds
            else None,
            "comparisons": asdict(self.counts),
            "shrink_runs": self.shrink_runs,
            "shrunk": None if found is None else found.history.to_json(),
            "differences": [] if found is None else [asdict(m) for m in found.mismatches],
            "reproducer": str(self.reproducer) if self.reproducer else None,
            "confirmed": self.confirmed,
        }


class _Found(Exception):
    pass


def _size(history: History) -> tuple[int, int]:
    return (len(history.ops), len(json.dumps(history.to_json())))


def search(executor: GuestExecutor, examples: int, seed: int) -> Report:
    """Run ``examples`` histories; on a mismatch let hypothesis shrink it (bounded by
    SHRINK_BUDGET runs) and keep the smallest failing history seen."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    report = Report(seed)
    start = time.monotonic()

    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @hseed(seed)
    @given(histories())
    def prop(history: History) -> None:
        if report.found is not None:
            if report.shrink_runs >= SHRINK_BUDGET:
                return  # out of budget: every further candidate "passes", so shrinking ends
            report.shrink_runs += 1
        else:
            report.examples += 1
        outcome = run_history(executor, history)
        report.counts.add(outcome.counts)
        if outcome.failed:
            if report.found is None:
                report.search_seconds = time.monotonic() - start
            if report.found is None or _size(outcome.history) < _size(report.found.history):
                report.found = outcome
            raise _Found

    with contextlib.suppress(_Found, ExceptionGroup, AssertionError):
        prop()
    report.seconds = time.monotonic() - start
    report.search_seconds = report.search_seconds or report.seconds
    if report.found is not None:
        report.found = _drop_steps(executor, report.found, report)
        again = run_history(executor, report.found.history)  # alone: is it reproducible?
        report.confirmed = again.failed
        if again.failed:
            report.found = again
    return report


def _drop_steps(executor: GuestExecutor, found: Outcome, report: Report) -> Outcome:
    """A last pass after hypothesis's: drop each operation in turn, keeping every drop after
    which the history still fails. Cheap (one run per operation) and it removes the steps
    hypothesis leaves when its budget runs out."""
    step = len(found.history.ops) - 1
    while step >= 0:
        h = found.history
        step = min(step, len(h.ops) - 1)  # a failing candidate may come back cut shorter
        candidate = History(h.origin_sectors, h.ops[:step] + h.ops[step + 1 :])
        if candidate.ops and well_formed(candidate):
            report.shrink_runs += 1
            outcome = run_history(executor, candidate)
            if outcome.failed:
                found = outcome
        step -= 1
    return found


def write_reproducer(outcome: Outcome, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = outcome.history.dumps()
    path = folder / f"difftest-{hashlib.sha256(text.encode()).hexdigest()[:10]}.json"
    path.write_text(text)
    return path


@contextlib.contextmanager
def booted(
    accel: str = "auto",
    workdir: Path | None = None,
    *,
    kernel: str | None = None,
    modules: Path | None = None,
) -> Iterator[GuestExecutor]:
    """One guest and its executor for a whole run; the guest goes when the block ends."""
    import tempfile

    from vmtests.vm import accel as accel_mod
    from vmtests.vm import guest_image

    img = guest_image.prepare(kernel, modules=modules)
    with contextlib.ExitStack() as stack:
        folder = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dt-")))
        session = stack.enter_context(
            Session(img, folder, accel=accel_mod.choose(accel, img), memory_mib=1024)
        )
        yield GuestExecutor(session, kernel={"spec": img.layer.spec, "release": img.release})


__all__ = [
    "Counts",
    "ExecutorError",
    "GuestExecutor",
    "Mismatch",
    "Outcome",
    "Report",
    "booted",
    "check_points",
    "compare",
    "run_history",
    "search",
    "write_reproducer",
]
