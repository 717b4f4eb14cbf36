"""Power cuts, executed: base disks once per kind, then chains of boots, one boot per cut.

Why it is shaped so (measured under TCG, 1 vCPU): a cut used to cost two boots, a fresh keep
disk and mkfs, a prepare or pvcreate, and -- for a merge -- a whole create with its writer,
mount and tree digest, ~20 s on an idle machine. Now:

* ``build``: one boot per filesystem makes the base disks of every kind the run needs (raw
  files: origin + keep); every cut boots on qcow2 overlays of them, so the set-up is paid once;
* a chain: boot k judges the cut armed in boot k-1 (its overlays are attached again, under the
  same serials) and then arms cut k on fresh overlays; ``faults.chains`` keeps neighbours of
  different kinds, so the two never share a name or a filesystem UUID. A cut whose neighbour
  is of its own kind waits for the next boot; the last cut gets a boot of its own.

A lost VM never stops the run: a ``VmError`` fails the cuts of that boot, and the chain goes
on with a fresh boot. Any other exception is a bug in the harness, not a failed cut, and
surfaces as one. A failed cut keeps its folder (console logs, the judge's log with every
command and fsck output, the ledgers, its overlays); a passing one keeps only its logs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmtests import guest
from vmtests.faults.matrix import Cut, kind_spec
from vmtests.vm.errors import ChannelError, VmError

ORIGIN_MIB, KEEP_MIB = 256, 160
PAUSE_TIMEOUT_S = 90.0
STEP_TIMEOUT_S = 300.0  # a hung judge fails its cut; it must not eat the run's 15 minutes
Say = Callable[[str], None]


@dataclass
class Armed:
    """A cut whose QEMU was killed: its overlays wait for the next boot's judge."""

    cut: Cut
    spec: dict[str, Any]
    folder: Path
    disks: list[Any]
    paused: bool
    seconds: float  # worker time spent on it so far (its share of the arming boot)


@dataclass
class Runner:
    image: Any
    accel: Any
    report: Path
    seed: int
    say: Say = print
    bases: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    boots: list[dict[str, Any]] = field(default_factory=list)  # where each boot's time went
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- bases -----------------------------------------------------------------------------

    def build(self, kids: list[str], cuts: list[Cut]) -> dict[str, Any]:
        """One boot makes the base disks of ``kids``; returns what the guest said per kind."""
        from vmtests.vm.machine import make_disk
        from vmtests.vm.qemu import Disk
        from vmtests.vm.session import Session

        folder = self.report / "bases"
        folder.mkdir(parents=True, exist_ok=True)
        disks, paths = [], {}
        for kid in kids:
            o = make_disk(folder / f"{kid}-o.raw", ORIGIN_MIB << 20)
            k = make_disk(folder / f"{kid}-k.raw", KEEP_MIB << 20)
            disks += [Disk(o, f"{kid}-o"), Disk(k, f"{kid}-k")]
            paths[kid] = (o, k)
        t0 = time.monotonic()
        specs = json.dumps([kind_spec(kid, cuts) for kid in kids])
        built: list[dict[str, Any]] = []
        try:
            with Session(
                self.image, folder / f"boot-{kids[0]}", accel=self.accel, disks=disks
            ) as vm:
                done = vm.run(guest.command("faults.main", "build", specs), timeout=900)
                (folder / f"build-{kids[0]}.log").write_bytes(done.stderr)
                vm.power_cut()
            if done.ok:
                built = json.loads(done.stdout.decode().strip().splitlines()[-1])
        except VmError as exc:  # its cuts fail with "no base disks"; the run goes on
            built = [{"kid": kid, "error": f"{type(exc).__name__}: {exc}"[-800:]} for kid in kids]
        ok = {b["kid"] for b in built if b.get("built")}
        with self._lock:
            self.bases.update({kid: p for kid, p in paths.items() if kid in ok})
        seconds = round(time.monotonic() - t0, 1)
        self.say(f"base {' '.join(kids)}: {len(ok)}/{len(kids)} built ({seconds} s)")
        return {
            "kids": kids,
            "built": sorted(ok),
            "seconds": seconds,
            "errors": [b.get("error") for b in built if not b.get("built")],
        }

    # -- chains ----------------------------------------------------------------------------

    def _overlays(self, cut: Cut, folder: Path) -> list[Any]:
        from vmtests.vm.machine import make_disk
        from vmtests.vm.qemu import Disk, DiskFormat

        origin, keep = self.bases[cut.kid]
        q = DiskFormat.QCOW2
        return [
            Disk(
                make_disk(folder / "origin.qcow2", ORIGIN_MIB << 20, "qcow2", origin),
                f"{cut.kid}-o",
                q,
            ),
            Disk(
                make_disk(folder / "keep.qcow2", KEEP_MIB << 20, "qcow2", keep), f"{cut.kid}-k", q
            ),
        ]

    def chain(self, cuts: list[tuple[Cut, bool]], done: Callable[[dict[str, Any]], None]) -> None:
        """Run ``cuts`` (each with its controls flag) one boot per cut; ``done`` gets every
        result as soon as it is judged."""
        queue = list(cuts)
        pending: Armed | None = None
        while queue or pending:
            nxt: tuple[Cut, bool] | None = None
            if queue and (pending is None or queue[0][0].kid != pending.cut.kid):
                nxt = queue.pop(0)
            pending = self._boot(pending, nxt, done)

    def _boot(
        self,
        pending: Armed | None,
        nxt: tuple[Cut, bool] | None,
        done: Callable[[dict[str, Any]], None],
    ) -> Armed | None:
        from vmtests.vm.session import Session

        t0 = time.monotonic()
        arming: Armed | None = None
        if nxt is not None:
            cut, controls = nxt
            folder = self.report / "cuts" / cut.id
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            if cut.kid not in self.bases:
                done(_failed(cut, 0.0, f"no base disks for kind {cut.kid} (see bases/)"))
                nxt = None
            else:
                disks = self._overlays(cut, folder)
                arming = Armed(cut, cut.spec(controls=controls), folder, disks, False, 0.0)
        if pending is None and arming is None:
            return None
        workdir = (arming or pending).folder / "boot"  # type: ignore[union-attr]
        if arming is None and pending is not None:
            workdir = pending.folder / "judge-boot"
        disks = (pending.disks if pending else []) + (arming.disks if arming else [])
        todo = {"judge": pending.spec if pending else None, "arm": arming.spec if arming else None}
        judged: dict[str, Any] | None = None
        share = 0.0
        times: dict[str, Any] = {
            "judge": pending.cut.id if pending else None,
            "arm": arming.cut.id if arming else None,
        }
        try:
            t_start = time.monotonic()
            with Session(self.image, workdir, accel=self.accel, disks=disks) as vm:
                booted = time.monotonic()
                times["restored"] = vm.machine.restored  # from a saved state (vm/resume.py)
                step = vm.run(
                    guest.command("faults.main", "step", json.dumps(todo)), timeout=STEP_TIMEOUT_S
                )
                t_step = time.monotonic()
                times.update(
                    prepare_s=t_start - t0, boot_s=booted - t_start, step_s=t_step - booted
                )
                log = step.stderr
                doc = json.loads(step.stdout.decode().strip().splitlines()[-1]) if step.ok else {}
                if pending is not None:
                    said = log.decode(errors="replace")[-800:]
                    judged = doc.get("judged") or {
                        "ok": False,
                        "problems": [f"the step exited {step.returncode}: {said}"],
                    }
                    j_s = float(judged.get("seconds", 0.0))
                    share = (booted - t0) / (2 if arming else 1) + j_s
                    (pending.folder / "judge.log").write_bytes(log)
                    if not judged.get("ok"):
                        _fetch(vm, pending)
                    done(self._result(pending, judged, share, workdir))
                if arming is not None:
                    armed = doc.get("armed") or {"error": "no answer from the step"}
                    (arming.folder / "arm.log").write_bytes(log)
                    if "error" in armed:
                        vm.power_cut()
                        done(_failed(arming.cut, time.monotonic() - t0, armed["error"]))
                        return None
                    arming.paused = _wait_cut(vm, arming)
                times["wait_s"] = time.monotonic() - t_step
                vm.power_cut()
            times["total_s"] = time.monotonic() - t0
            with self._lock:
                self.boots.append(
                    {k: round(v, 2) if isinstance(v, float) else v for k, v in times.items()}
                )
        except VmError as exc:  # a lost VM fails this boot's cuts, never the run
            why = f"{type(exc).__name__}: {exc}"[-1500:]
            if pending is not None and judged is None:
                done(_failed(pending.cut, pending.seconds, "judge boot: " + why))
            if arming is not None:
                done(_failed(arming.cut, time.monotonic() - t0, "arm boot: " + why))
            return None
        if arming is not None:
            arming.seconds = time.monotonic() - t0 - share
        return arming

    def _result(
        self, armed: Armed, judged: dict[str, Any], share: float, judge_boot: Path
    ) -> dict[str, Any]:
        cut = armed.cut
        doc = dict(judged)
        problems = list(doc.get("problems", []))
        if not armed.paused:
            problems.append(f"the operation never reached its cut point ({cut.marker or 'pause'})")
        controls = doc.get("controls") or {}
        missed = [k for k, v in controls.items() if not v]
        if missed:
            problems.append(f"negative controls not caught: {', '.join(missed)}")
        ok = bool(doc.get("ok")) and not problems
        doc.update(ok=ok, problems=problems)
        doc["judge_s"] = doc.pop("seconds", None)
        result = {**_plain(cut), "id": cut.id, **doc, "seconds": round(armed.seconds + share, 1)}
        if ok:
            for f in armed.folder.glob("*.qcow2"):
                f.unlink()
            for f in armed.folder.rglob("initrd.img"):
                f.unlink()
        else:
            with contextlib.suppress(OSError):
                shutil.copy(judge_boot / "console.log", armed.folder / "judge-console.log")
            result["replay"] = (
                f"vmtest run --matrix faults --seed {self.seed} "
                f"--scenario {cut.id} -n 1 --report report-{cut.id}"
            )
        return result

    # -- bad inputs ------------------------------------------------------------------------

    def hostile(self, sample: int | None) -> dict[str, Any]:
        """The bad-input judge (``vmtests/guest/faults/hostile.py``) in one boot: every case, or a
        seeded sample, plus its two negative controls, and every ZFS case: the runner's image
        has ZFS's module (``cli.run_matrix`` hands it ``guest_image.with_zfs``'s)."""
        from vmtests.vm.session import Session

        t0 = time.monotonic()
        argv = guest.command("faults.hostile", "--control", "--zfs")  # ZFS's cases too
        if sample is not None:
            argv += ["--sample", str(sample), "--seed", str(self.seed)]
        folder = self.report / "bad-inputs"
        try:
            with Session(self.image, folder, accel=self.accel) as vm:
                done = vm.run(argv, timeout=900)
                vm.power_cut()
        except VmError as exc:  # a lost VM is a failed bad-input run, reported, not a crash
            return {
                "tried": 0,
                "refused_cleanly": 0,
                "controls": 0,
                "controls_caught": 0,
                "error": f"{type(exc).__name__}: {exc}"[-800:],
            }
        (folder / "hostile.log").write_bytes(done.stderr)
        if not done.ok:
            return {
                "tried": 0,
                "refused_cleanly": 0,
                "controls": 0,
                "controls_caught": 0,
                "error": done.stderr.decode(errors="replace")[-800:],
            }
        cases = json.loads(done.stdout.decode().strip().splitlines()[-1])["cases"]
        real = [c for c in cases if not c["label"].startswith("CONTROL")]
        ctl = [c for c in cases if c["label"].startswith("CONTROL")]
        out = {
            "tried": len(real),
            "refused_cleanly": sum(bool(c["clean"]) for c in real),
            "not_clean": [
                f"{c['label']}: exit {c['returncode']} {c['stderr'].strip()!r}"
                for c in real
                if not c["clean"]
            ],
            "controls": len(ctl),
            "controls_caught": sum(not c["clean"] for c in ctl),
            "seconds": round(time.monotonic() - t0, 1),
        }
        self.say(
            f"bad inputs: {out['refused_cleanly']}/{out['tried']} refused cleanly, "
            f"{out['controls_caught']}/{out['controls']} controls caught "
            f"({out['seconds']} s)"
        )
        return out


def _wait_cut(vm: Any, armed: Armed) -> bool:
    """Until the pause line (a step cut) or for the seeded delay; True when it got there."""
    cut = armed.cut
    marker = ("test pause" if cut.step else cut.marker).encode()
    seen = not marker
    deadline = time.monotonic() + PAUSE_TIMEOUT_S
    while not seen and time.monotonic() < deadline:
        # the agent reads the file itself: no process to fork in a guest whose one vCPU
        # belongs to the operation under test
        try:
            seen = marker in vm.get(f"/tmp/op-{cut.kid}.err")
        except ChannelError:  # not there (yet): a lost VM raises something else, and ends us
            seen = False
        if not seen:
            time.sleep(0.1)
    if seen and not cut.step:
        time.sleep(cut.delay_ms / 1000)
    return seen


def _fetch(vm: Any, armed: Armed) -> None:
    """A failed cut keeps its ledgers (what was acknowledged) next to the judge's log."""
    for name in ("ledger", "ledger2", "before", "before-b"):
        with contextlib.suppress(VmError):
            (armed.folder / name).write_bytes(vm.get(f"/k/{armed.cut.kid}/{name}"))


def _plain(cut: Cut) -> dict[str, Any]:
    return {
        "fs": cut.fs,
        "method": cut.method,
        "phase": cut.phase,
        "plan": cut.plan,
        "step": cut.step,
        "delay_ms": cut.delay_ms,
    }


def _failed(cut: Cut, seconds: float, why: str) -> dict[str, Any]:
    return {
        **_plain(cut),
        "id": cut.id,
        "seconds": round(seconds, 1),
        "ok": False,
        "problems": [why],
    }


__all__ = ["Runner"]
