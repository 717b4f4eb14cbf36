"""fio with ``verify=crc32c``: random and sequential, buffered and O_DIRECT.

Two fio processes run on the filesystem under test. ``pre`` writes four fixed-size jobs, each
with fio's own verify pass and a final fsync; it must finish before the snapshot begins, and its
exit is the acknowledgement ledgered for each job. ``load`` keeps O_DIRECT random I/O in flight
through the snapshot window and is killed afterwards. On the snapshot, fio re-reads the ``pre``
jobs with ``verify`` set: each block's crc32c header must match what fio wrote.

fio's start costs ~2 s under TCG, so the jobs are batched into as few invocations as possible.

Refused writes (refusal.py) are judged from fio's JSON output, job by job, since fio reports
errors as errnos: a ``pre`` job that failed with an errno the method documents as a refusal was
never acknowledged, so it is noted as refused and not ledgered; any other error fails. ``load``
runs with ``continue_on_error=write`` only under a method that documents refusals (so it goes on
through the window), and its first error is judged the same way when it is stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

from vmtests.guest.campaign.ledger import ABSENT, Ledger
from vmtests.guest.refusal import Rule

JOBS = {  # name: (rw, bs, direct)
    "randbuf": ("randwrite", "4k", 0),
    "seqbuf": ("write", "64k", 0),
    "randdirect": ("randwrite", "4k", 1),
    "seqdirect": ("write", "64k", 1),
}
WRITTEN = "written"


def _job_args(directory: str, seed: int, *, reread: bool = False) -> list[str]:
    """The job definitions; ``reread`` reads each file back sequentially, checking every block's
    crc32c header (a read job with ``verify`` set checks what it reads, and unlike
    ``verify_only`` needs no write access, so it runs on a read-only mount)."""
    args = [
        f"--directory={directory}",
        "--ioengine=psync",
        "--size=256k",
        "--verify=crc32c",
        "--randrepeat=1",
        f"--randseed={seed}",
    ]
    for name, (rw, bs, direct) in JOBS.items():
        args += [f"--name={name}", f"--filename={name}.dat", f"--bs={bs}"]
        args += ["--rw=read"] if reread else [f"--rw={rw}", f"--direct={direct}"]
    return args


def start_pre(root: str, seed: int) -> subprocess.Popen[bytes]:
    directory = os.path.join(root, "fio")
    os.makedirs(directory, exist_ok=True)
    argv = ["fio", "--output-format=json", "--end_fsync=1", "--do_verify=1"]
    return subprocess.Popen(
        [*argv, *_job_args(directory, seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def job_errors(out: str) -> dict[str, int] | None:
    """Each job's first error (an errno, 0 for none) from fio's JSON output; None if there is
    no JSON to read. With ``continue_on_error`` fio keeps going and reports ``first_error``."""
    try:
        jobs: list[dict[str, Any]] = json.loads(out[out.index("{") :])["jobs"]
        return {
            str(job["jobname"]): int(job.get("error") or job.get("first_error") or 0)
            for job in jobs
        }
    except (ValueError, KeyError, TypeError):
        return None


def _tail(proc: subprocess.Popen[bytes], err: bytes) -> str:
    return f"({proc.returncode}): {err.decode(errors='replace')[-500:]}"


def finish_pre(proc: subprocess.Popen[bytes], ledger: Ledger, t0: float, rule: Rule) -> str:
    """Wait for the ``pre`` jobs; ledger each one fio says was written and verified, note each
    one the method refused (refusal.py), and say what else went wrong ("" if nothing)."""
    out, err = proc.communicate()
    t1 = time.monotonic()
    errors = job_errors(out.decode(errors="replace"))
    if errors is None:
        if proc.returncode != 0:
            return f"fio pre-jobs failed {_tail(proc, err)}"
        errors = dict.fromkeys(JOBS, 0)
    failed = []
    for name in JOBS:
        code = errors.get(name, -1)
        if code == 0:
            ledger.record(f"f:{name}", WRITTEN, t0, t1)
        elif rule.refuses(code):
            ledger.refuse(f"f:{name}", WRITTEN, code, t0, t1)
        else:
            failed.append(f"{name}: {'missing' if code < 0 else os.strerror(code)}")
    return f"fio pre-jobs failed ({', '.join(failed)}) {_tail(proc, err)}" if failed else ""


def start_load(root: str, rule: Rule) -> subprocess.Popen[bytes]:
    directory = os.path.join(root, "fio")
    os.makedirs(directory, exist_ok=True)
    argv = [
        "fio",
        "--name=load",
        f"--directory={directory}",
        "--filename=load.dat",
        "--rw=randrw",
        "--bs=4k",
        "--size=2M",
        "--direct=1",
        "--ioengine=psync",
        "--rate_iops=25",  # in flight through the window without starving the one vCPU
        "--time_based",
        "--runtime=300",
        "--output-format=json",
    ]
    if rule.errnos:  # a refused write must not end the load (refusal.py); judged at the end
        argv.append("--continue_on_error=write")
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish_load(proc: subprocess.Popen[bytes], rule: Rule) -> str:
    """Stop the load and judge its errors: "" when it had none, or only documented refusals.
    It is stopped by SIGTERM, after which fio prints its summary (measured in the guest: the
    JSON, then exit status 128); with no summary to read, only an exit of its own is a
    failure."""
    ours = proc.poll() is None
    if ours:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate()
    errors = job_errors(out.decode(errors="replace"))
    if errors is None:
        return "" if ours or proc.returncode == 0 else f"fio load failed {_tail(proc, err)}"
    bad = [f"{n}: {os.strerror(c)}" for n, c in errors.items() if c and not rule.refuses(c)]
    return f"fio load failed ({', '.join(bad)}) {_tail(proc, err)}" if bad else ""


def verify(root: str, seed: int) -> tuple[dict[str, str], str]:
    """Re-read the fio jobs on the snapshot, verifying crc32c: each job's state, fio's output."""
    directory = os.path.join(root, "fio")
    states = {n: ABSENT for n in JOBS if not os.path.exists(os.path.join(directory, n + ".dat"))}
    if len(states) == len(JOBS):
        return states, "no fio files"
    argv = ["fio", "--output-format=json", "--readonly", *_job_args(directory, seed, reread=True)]
    proc = subprocess.run(argv, capture_output=True, check=False)
    out = proc.stdout.decode(errors="replace")
    try:
        jobs = json.loads(out[out.index("{") :])["jobs"]
        for job in jobs:
            if job["jobname"] not in states:
                states[job["jobname"]] = WRITTEN if job["error"] == 0 else f"torn:fio{job['error']}"
    except (ValueError, KeyError):
        for name in JOBS:
            states.setdefault(name, f"torn:fio-exit{proc.returncode}")
    return states, out[-3000:] + proc.stderr.decode(errors="replace")[-2000:]
