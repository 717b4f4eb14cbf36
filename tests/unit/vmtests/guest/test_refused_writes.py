"""The one rule for refused writes (vmtests/guest/refusal.py), fed to every workload.

Each workload gets EROFS from a faked system call, as during a remount-ro window: it must go on,
ledger nothing as acknowledged for the refused operation, note the refusal, and keep its ledgered
history one the oracle can place. The negative control of each: the same EROFS under a method
that does not document it ends the workload.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vmtests.guest import refusal, writer
from vmtests.guest.campaign import churn, fiojobs, ledger, mmapwriter, verify
from vmtests.guest.refusal import Rule

REFUSING = Rule("remount-ro")
STRICT = Rule("lvm")  # documents no refusal


class Refuser:
    """Wraps an os function: raises EROFS on the calls numbered in ``refuse`` (1-based) whose
    first argument lies inside ``root``, and passes every other call through."""

    def __init__(self, real: Callable[..., Any], root: Path, refuse: set[int]) -> None:
        self.real, self.root, self.refuse = real, str(root) + os.sep, refuse
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if str(args[0]).startswith(self.root):
            self.calls += 1
            if self.calls in self.refuse:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(args[0]))
        return self.real(*args, **kwargs)


@pytest.fixture
def led(tmp_path: Path) -> Iterator[ledger.Ledger]:
    out = ledger.Ledger(str(tmp_path / "ledger.jsonl"))
    yield out
    with contextlib.suppress(OSError):  # the tests close it to read it
        out.close()


def test_only_remount_ro_documents_a_refusal_and_only_erofs() -> None:
    assert REFUSING.refuses(errno.EROFS)
    assert not REFUSING.refuses(errno.EIO) and not REFUSING.refuses(errno.ENOSPC)
    assert not STRICT.refuses(errno.EROFS)  # negative control: undocumented elsewhere
    assert {"remount-ro": frozenset({errno.EROFS})} == refusal.DOCUMENTED


def test_a_refused_effect_did_not_happen_and_a_refused_ack_is_unacknowledged(
    led: ledger.Ledger,
) -> None:
    def refuse(_: object = None) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    assert not REFUSING.operate(led, "x", "s1", refuse, lambda _: None)
    assert REFUSING.operate(led, "x", "s1", lambda: None, refuse)
    assert REFUSING.operate(led, "x", "s2", lambda: None, lambda _: None)
    led.close()
    ops = ledger.load(led.path)
    assert [(o.step, o.state, o.acked) for o in ops] == [(1, "s1", False), (2, "s2", True)]
    assert ledger.refusals(led.path) == 2
    with pytest.raises(OSError):  # negative control: an undocumented errno is never refused
        REFUSING.operate(led, "x", "s3", lambda: None, lambda _: os.strerror(0) + refuse())
    with pytest.raises(OSError):
        STRICT.operate(led, "x", "s3", refuse, lambda _: None)


def test_an_unacknowledged_state_is_allowed_but_never_required() -> None:
    hist = [
        ledger.Op("c:1", 1, "s1", 1.0, 2.0),
        ledger.Op("c:1", 2, "s2", 3.0, float("inf")),  # its ack was refused before the window
    ]
    for seen in ("s1", "s2"):
        counts = verify.classify(verify.histories(hist), lambda _o, s=seen: s, 10.0, 12.0)
        assert verify.ledger_ok(counts, "remount-ro"), counts
    lost = verify.classify(verify.histories(hist), lambda _o: ledger.ABSENT, 10.0, 12.0)
    assert lost.acked_lost == 1  # negative control: s1 was acknowledged


def run_writer(tmp_path: Path, led: ledger.Ledger, rule: Rule, *, sync: bool) -> ledger.Writer:
    w = ledger.Writer(str(tmp_path), led, 0, 5, threading.Event(), rule=rule, sync=sync)
    os.makedirs(tmp_path / "w0")
    for _ in range(12):
        w.step()
    return w


@pytest.mark.parametrize("sync", [True, False], ids=["writer", "lazy"])
def test_the_ledger_writer_goes_on_past_a_refusal(
    tmp_path: Path, led: ledger.Ledger, monkeypatch: pytest.MonkeyPatch, sync: bool
) -> None:
    fake = Refuser(os.open, tmp_path / "w0", {1, 4, 5})
    monkeypatch.setattr(ledger.os, "open", fake)
    w = run_writer(tmp_path, led, REFUSING, sync=sync)
    led.close()
    ops = ledger.load(led.path)
    assert ledger.refusals(led.path) == 3
    assert len(ops) == 12 - 3 and all(o.acked for o in ops)
    # every ledgered state is on disk, so the oracle places every object at its last state
    counts = verify.classify(
        verify.histories(ops), lambda o: ledger.observe_writer(str(tmp_path), o), 1e9, 1e9
    )
    assert verify.ledger_ok(counts, "remount-ro") and counts.acked_checked == len(ops), counts
    assert sum(w.files.values()) >= 1


def test_the_ledger_writer_fails_on_an_undocumented_refusal(
    tmp_path: Path, led: ledger.Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger.os, "open", Refuser(os.open, tmp_path / "w0", {2}))
    with pytest.raises(OSError) as err:
        run_writer(tmp_path, led, STRICT, sync=True)
    assert err.value.errno == errno.EROFS
    w = ledger.Writer(str(tmp_path), led, 1, 5, threading.Event(), rule=STRICT)
    monkeypatch.setattr(ledger.os, "open", Refuser(os.open, tmp_path / "w1", {1}))
    stop = w.stop
    threading.Timer(0.5, stop.set).start()
    w.run()  # the thread body: the error is kept for the runner, not swallowed
    assert isinstance(w.error, OSError) and w.error.errno == errno.EROFS


def make_churn(root: Path, led: ledger.Ledger, rule: Rule) -> churn.Churn:
    c = churn.Churn(str(root), led, 7, threading.Event(), rule=rule)
    os.makedirs(c.dir)
    return c


@pytest.mark.parametrize(
    ("module", "call"),
    [(os, "rename"), (os, "link"), (os, "unlink"), (os, "mkdir"), (os, "open"), (builtins, "open")],
    ids=["rename", "link", "unlink", "mkdir", "truncate", "create"],
)
def test_churn_retries_a_refused_step_and_its_history_stays_the_lifecycle(
    tmp_path: Path, led: ledger.Ledger, monkeypatch: pytest.MonkeyPatch, module: Any, call: str
) -> None:
    c = make_churn(tmp_path, led, REFUSING)
    monkeypatch.setattr(module, call, Refuser(getattr(module, call), tmp_path / "churn", {1, 2, 3}))
    for _ in range(60):
        c.tick()
    led.close()
    assert ledger.refusals(led.path) == 3
    ops = ledger.load(led.path)
    for obj, hist in verify.histories(ops).items():
        k = int(obj[2:])
        expected = file_or_dir_states(k, c.seed, obj[0])
        assert [o.state for o in hist] == expected[: len(hist)], obj  # in order, none skipped
        shown = churn.describe(str(tmp_path), k, c.seed) if obj[0] == "c" else None
        if shown is not None:  # the tree shows exactly the last ledgered state
            assert shown == hist[-1].state.split(verify.PARTIAL)[0], obj


def file_or_dir_states(k: int, seed: int, kind: str) -> list[str]:
    return churn.file_states(k, seed) if kind == "c" else [f"x{k}", f"y{k}"]


def test_churn_dies_on_a_refusal_its_method_does_not_document(
    tmp_path: Path, led: ledger.Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(churn.os, "link", Refuser(os.link, tmp_path / "churn", {1}))
    c = make_churn(tmp_path, led, STRICT)
    with pytest.raises(OSError) as err:
        for _ in range(60):
            c.tick()
    assert err.value.errno == errno.EROFS


class FakeMapping:
    """A bytearray with mmap's flush, refusing the msyncs numbered in ``refuse``."""

    def __init__(self, refuse: set[int]) -> None:
        self.data = bytearray(mmapwriter.PAGE * mmapwriter.PAGES)
        self.refuse, self.flushes = refuse, 0

    def __setitem__(self, index: slice, data: bytes) -> None:
        self.data[index] = data

    def flush(self, offset: int, size: int) -> None:
        self.flushes += 1
        if self.flushes in self.refuse:
            raise OSError(errno.EROFS, "Read-only file system")


def test_the_mmap_writer_ledgers_a_refused_msync_unacknowledged(
    tmp_path: Path, led: ledger.Ledger
) -> None:
    w = mmapwriter.MmapWriter(str(tmp_path), led, 3, threading.Event(), rule=REFUSING)
    m = FakeMapping({2, 3})
    for _ in range(6):
        w.tick(m)
    led.close()
    ops = ledger.load(led.path)
    assert [o.acked for o in ops] == [True, False, False, True, True, True]
    assert ledger.refusals(led.path) == 2
    with pytest.raises(OSError):  # negative control
        mmapwriter.MmapWriter(str(tmp_path), led, 3, threading.Event(), rule=STRICT).tick(
            FakeMapping({1})
        )


class FakeFio:
    """A finished (or stoppable) fio process with a given JSON output and exit status."""

    def __init__(self, jobs: dict[str, dict[str, int]], returncode: int = 0) -> None:
        self.out = json.dumps({"jobs": [{"jobname": n, **v} for n, v in jobs.items()]})
        self.returncode = returncode
        self.signalled = False

    def communicate(self) -> tuple[bytes, bytes]:
        return b"fio-3.33\n" + self.out.encode(), b""

    def poll(self) -> int | None:
        return None

    def send_signal(self, _sig: int) -> None:
        self.signalled = True


def pre(jobs: dict[str, int]) -> Any:
    return FakeFio({n: {"error": c} for n, c in jobs.items()}, 1 if any(jobs.values()) else 0)


def test_fio_pre_jobs_refused_are_noted_not_ledgered(led: ledger.Ledger) -> None:
    codes = dict.fromkeys(fiojobs.JOBS, 0) | {"randbuf": errno.EROFS}
    assert fiojobs.finish_pre(pre(codes), led, 1.0, REFUSING) == ""
    led.close()
    assert sorted(o.obj for o in ledger.load(led.path)) == [
        f"f:{n}" for n in sorted(fiojobs.JOBS) if n != "randbuf"
    ]
    assert ledger.refusals(led.path) == 1


def test_fio_pre_jobs_fail_on_an_undocumented_error(led: ledger.Ledger) -> None:
    codes = dict.fromkeys(fiojobs.JOBS, 0) | {"randbuf": errno.EROFS}
    assert "randbuf: Read-only file system" in fiojobs.finish_pre(pre(codes), led, 1.0, STRICT)
    codes["randbuf"] = errno.EIO
    assert "Input/output error" in fiojobs.finish_pre(pre(codes), led, 1.0, REFUSING)
    bare = FakeFio({}, 1)
    bare.out = "fio: bad option"
    assert "failed (1)" in fiojobs.finish_pre(bare, led, 1.0, REFUSING)  # type: ignore[arg-type]


def test_fio_load_goes_on_through_refusals_and_is_judged_when_stopped(tmp_path: Path) -> None:
    argv: list[list[str]] = []

    def popen(args: list[str], **_kw: Any) -> Any:
        argv.append(args)
        return FakeFio({})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "Popen", popen)
        fiojobs.start_load(str(tmp_path), REFUSING)
        fiojobs.start_load(str(tmp_path), STRICT)
    assert "--continue_on_error=write" in argv[0]
    assert "--continue_on_error=write" not in argv[1]  # elsewhere the first error ends it
    refused = FakeFio({"load": {"error": 0, "total_err": 7, "first_error": errno.EROFS}})
    assert fiojobs.finish_load(refused, REFUSING) == ""  # type: ignore[arg-type]
    assert refused.signalled
    strict = FakeFio({"load": {"error": errno.EROFS}})
    assert "Read-only" in fiojobs.finish_load(strict, STRICT)  # type: ignore[arg-type]
    eio = FakeFio({"load": {"error": 0, "total_err": 1, "first_error": errno.EIO}})
    assert "Input/output" in fiojobs.finish_load(eio, REFUSING)  # type: ignore[arg-type]


def test_writer_py_rewrites_a_refused_file_and_ledgers_only_acknowledged_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, log, stop = tmp_path / "w", tmp_path / "ledger", tmp_path / "stop"
    fake = Refuser(os.open, d, {2, 3})
    real_fsync_dir = writer._fsync_dir
    acks: list[int] = []

    def fsync_dir(path: Path) -> None:  # the fifth acknowledgement is refused; stop at ten
        acks.append(1)
        if len(acks) == 5:
            raise OSError(errno.EROFS, "Read-only file system")
        if len(acks) >= 10:
            stop.touch()
        real_fsync_dir(path)

    monkeypatch.setattr(writer.os, "open", fake)
    monkeypatch.setattr(writer, "_fsync_dir", fsync_dir)
    assert writer.write(d, log, stop, Rule("remount-ro")) == 0
    numbers = [int(x) for x in log.read_text().split()]
    assert numbers == list(range(1, 10))  # gapless: the refused ones were written again
    assert writer.check(d, len(numbers)) == 0
    stop.unlink()
    acks.clear()
    fake.calls, fake.refuse = 0, {1}
    with pytest.raises(OSError):  # negative control: no method given, no refusal documented
        writer.write(d, tmp_path / "ledger2", stop)


def _scripted_takes(monkeypatch: pytest.MonkeyPatch, outcomes: list[object]) -> list[object]:
    """targets.take answers from ``outcomes`` in turn (an exception is raised), with no
    pauses between tries; the list is returned for the test to refill."""
    from vmtests.guest.campaign import scenario, targets

    def take(_spec: object, _origin: object) -> targets.Snapshot:
        out = outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        assert isinstance(out, targets.Snapshot)
        return out

    monkeypatch.setattr(targets, "take", take)
    monkeypatch.setattr(scenario.time, "sleep", lambda _s: None)
    return outcomes


def test_a_create_remount_ro_refuses_as_busy_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vmtests.guest.campaign import scenario, targets

    busy = RuntimeError("step 1 (mount -o remount,ro /mnt/origin) failed: mount point is busy.")
    outcomes = _scripted_takes(monkeypatch, [busy, busy, targets.Snapshot("/dev/loop1")])
    origin = targets.Origin("/dev/vmtest/disk0", "ext4")
    res: dict[str, Any] = {}
    assert scenario.take({}, origin, REFUSING, res).device == "/dev/loop1"
    assert res["create_refused"] == 2
    # negative controls: busy under a method that does not document it, another error, and
    # a busy that never ends all propagate
    for rule, error in ((STRICT, busy), (REFUSING, RuntimeError("no space left"))):
        outcomes[:] = [error, targets.Snapshot("/dev/loop1")]
        with pytest.raises(RuntimeError):
            scenario.take({}, origin, rule, {})
    outcomes[:] = [busy] * scenario.CREATE_TRIES
    with pytest.raises(RuntimeError, match="busy"):
        scenario.take({}, origin, REFUSING, {})


def test_the_desktop_probe_counts_every_remount_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Claim 6's probe tries PROBE_TRIES times and keeps the count, whether a try gets through
    (3 refused, then a snapshot) or none does (all refused, then the error propagates)."""
    from vmtests.guest.campaign import scenario, targets

    busy = RuntimeError("step 1 (mount -o remount,ro /mnt/origin) failed: mount point is busy.")
    outcomes = _scripted_takes(monkeypatch, [])
    origin = targets.Origin("/dev/vmtest/disk0", "ext4")
    spec = {"workload": "desktop"}
    outcomes[:] = [busy, busy, busy, targets.Snapshot("/dev/loop1")]
    res: dict[str, Any] = {}
    assert scenario.take(spec, origin, REFUSING, res).device == "/dev/loop1"
    assert res["busy"] == {"tries": 4, "refused": 3}
    outcomes[:] = [busy] * scenario.PROBE_TRIES
    res = {}
    with pytest.raises(RuntimeError, match="busy"):
        scenario.take(spec, origin, REFUSING, res)
    assert res["busy"] == {"tries": scenario.PROBE_TRIES, "refused": scenario.PROBE_TRIES}
    assert scenario.PROBE_TRIES > scenario.CREATE_TRIES  # a rate, not a retry


def test_a_documented_refusal_quotes_snapkit_not_the_argv() -> None:
    from vmtests.guest.campaign import scenario

    exc = RuntimeError(
        "snapkit snapshot create /mnt/origin --name snap --method lvm exited 1: snapkit: error: "
        "method lvm would freeze jfs: a frozen JFS is not consistent on disk"
    )
    said = scenario._said(exc, "would freeze jfs")
    assert said.startswith("snapkit: error: method lvm would freeze jfs") and "--name" not in said
    assert scenario._said(RuntimeError("plain words"), "busy") == "plain words"
