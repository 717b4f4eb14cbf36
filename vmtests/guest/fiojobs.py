"""fio with ``verify=crc32c``: random and sequential, buffered and O_DIRECT.

Two fio processes run on the filesystem under test. ``pre`` writes four fixed-size jobs, each
with fio's own verify pass and a final fsync; it must finish before the snapshot begins, and its
exit is the acknowledgement ledgered for each job. ``load`` keeps O_DIRECT random I/O in flight
through the snapshot window and is killed afterwards. On the snapshot, fio re-reads the ``pre``
jobs with ``verify`` set: each block's crc32c header must match what fio wrote.

fio's start costs ~2 s under TCG, so the jobs are batched into as few invocations as possible.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from vmtests.guest.ledger import ABSENT, Ledger

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
    argv = ["fio", "--output-format=terse", "--end_fsync=1", "--do_verify=1"]
    return subprocess.Popen(
        [*argv, *_job_args(directory, seed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def finish_pre(proc: subprocess.Popen[bytes], ledger: Ledger, t0: float) -> str:
    """Wait for the ``pre`` jobs; ledger them if fio says they were written and verified."""
    _, err = proc.communicate()
    t1 = time.monotonic()
    if proc.returncode != 0:
        return f"fio pre-jobs failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}"
    for name in JOBS:
        ledger.record(f"f:{name}", WRITTEN, t0, t1)
    return ""


def start_load(root: str) -> subprocess.Popen[bytes]:
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
        "--output-format=terse",
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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
