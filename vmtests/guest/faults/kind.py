"""Where one power-cut kind lives in the guest: its disks, mount points, names and files.

Every name carries the kind id, so two kinds can share one boot (the judge of one cut and the
arming of the next) without meeting: their dm devices, VGs, snapshots, mount points, state
directories and writer stop files all differ. Standard library only.

A stacked kind (method ``dm+crypt`` or ``lvm+crypt``, issue 19) has its filesystem on a plain
dm-crypt mapping ``c<kid>`` over the base (the prepared device or the LV); snapkit is run with
the base's method. Its key is the harness's, kept on the keep disk (``/k/<kid>/key``) so that
every boot can open the mapping again as a user's crypttab would: a power cut takes every dm
table, the crypt mapping's too, and snapkit never stores that key.

A ZFS kind (method ``zfs``, issue 14) has a pool ``p<kid>`` on its origin disk and the dataset
``p<kid>/fs`` (``mountpoint=legacy``, so mount(8) mounts it like the others); every boot
imports the pool, as a boot's zfs-import would, and a teardown exports it.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from dataclasses import dataclass
from typing import Any

from vmtests.guest import zfsdisk
from vmtests.guest.proc import log, run

CIPHER = "aes-xts-plain64"
# The phases that roll the origin back to a snapshot: issue 6's merge, and issue 17's merge of
# one snapshot while a sibling snapshot of the same origin exists (the host's faults.matrix
# names them too; the guest imports nothing of the host's)
MERGES = ("merge", "merge-sibling")


@dataclass(frozen=True)
class Kind:
    kid: str
    fs: str
    method: str  # "dm", "dm-direct", "lvm", "dm+crypt" or "lvm+crypt"
    snapped: bool
    sibling: bool = False  # a second snapshot, taken after the first (merge-sibling phase)

    @classmethod
    def of(cls, spec: dict[str, Any]) -> Kind:
        sibling = bool(spec.get("sibling"))
        return cls(spec["kid"], spec["fs"], spec["method"], bool(spec["snapped"]), sibling)

    @property
    def base_method(self) -> str:
        """The method snapkit is run with: a stacked kind's is that of the layer below."""
        return self.method.split("+")[0]

    @property
    def crypt(self) -> bool:
        return self.method.endswith("+crypt")

    @property
    def zfs(self) -> bool:
        return self.fs == "zfs"

    @property
    def pool(self) -> str:
        return f"p{self.kid}"

    @property
    def keep(self) -> str:
        return f"/k/{self.kid}"

    @property
    def state(self) -> str:
        return f"{self.keep}/state"

    @property
    def ledger(self) -> str:  # files of the base: w/f1.. (snapped kinds)
        return f"{self.keep}/ledger"

    @property
    def ledger2(self) -> str:  # files the arm's writer acknowledged: w2/f1..
        return f"{self.keep}/ledger2"

    @property
    def before(self) -> str:  # acknowledged count the snapshot must hold
        return f"{self.keep}/before"

    @property
    def expected(self) -> str:  # tree digest of the snapshot (snapped kinds)
        return f"{self.keep}/expected"

    @property
    def sibling_name(self) -> str:  # the snapshot left beside the merged one
        return f"t{self.kid}"

    @property
    def sibling_before(self) -> str:  # acknowledged count the sibling must hold
        return f"{self.keep}/before-b"

    @property
    def sibling_expected(self) -> str:  # tree digest of the sibling at its creation
        return f"{self.keep}/expected-b"

    @property
    def mnt(self) -> str:
        return f"/m/{self.kid}"

    @property
    def snap_mnt(self) -> str:
        return f"/m/{self.kid}s"

    @property
    def origin_disk(self) -> str:
        return f"/dev/vmtest/{self.kid}-o"

    @property
    def keep_disk(self) -> str:
        return f"/dev/vmtest/{self.kid}-k"

    @property
    def name(self) -> str:
        return f"s{self.kid}"

    @property
    def prepared(self) -> str:
        return f"o{self.kid}"

    @property
    def vg(self) -> str:
        return f"vg{self.kid}"

    @property
    def base_dev(self) -> str:  # what the method snapshots
        lvm = self.base_method == "lvm"
        return f"/dev/{self.vg}/lv0" if lvm else f"/dev/mapper/{self.prepared}"

    @property
    def crypt_name(self) -> str:
        return f"c{self.kid}"

    @property
    def key_file(self) -> str:  # the harness's test key, on the persistent keep disk
        return f"{self.keep}/key"

    @property
    def origin_dev(self) -> str:  # where the filesystem is (zfs: the dataset)
        if self.zfs:
            return f"{self.pool}/fs"
        return f"/dev/mapper/{self.crypt_name}" if self.crypt else self.base_dev

    @property
    def dm_name(self) -> str:  # the origin's dm name (LVM doubles no hyphen: kids have none)
        if self.crypt:
            return self.crypt_name
        return f"{self.vg}-lv0" if self.base_method == "lvm" else self.prepared

    @property
    def stop(self) -> str:
        return f"/tmp/stop-{self.kid}"

    @property
    def op_err(self) -> str:
        return f"/tmp/op-{self.kid}.err"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SNAPKIT_STATE_DIR": self.state, "DM_DISABLE_UDEV": "1"}


def attach(k: Kind, *, fresh: bool = False) -> None:
    """Mount the kind's keep disk (made first when ``fresh``) and load what the kind needs."""
    for d in (k.keep, k.mnt, k.snap_mnt):
        os.makedirs(d, exist_ok=True)
    if fresh:
        run(["mkfs.ext4", "-q", "-F", k.keep_disk])
    run(["mount", k.keep_disk, k.keep])
    os.makedirs(k.state, exist_ok=True)
    run(["modprobe", k.fs], check=False)
    if k.crypt:
        run(["modprobe", "dm-crypt"], check=False)
    if k.base_method == "lvm" and not fresh:
        run(["vgchange", "-ay", k.vg], check=False)  # what the boot's LVM activation does
    if k.zfs and not fresh:  # what the boot's zfs-import does (-f: the cut left it imported)
        vdev = zfsdisk.partition_of(k.origin_disk)
        run(["zpool", "import", "-f", "-N", "-d", vdev, k.pool])


def teardown(k: Kind) -> None:
    """Take the kind's devices out of the kernel once it is judged, before the next kind is
    armed in the same boot: snapkit adopts every snapkit device the kernel shows into the
    state file it is using (``Flow.load``), so two kinds must never be live at once."""
    for mnt in (k.snap_mnt, k.mnt):
        run(["umount", mnt], check=False)
    if k.zfs:
        run(["zpool", "export", "-f", k.pool], check=False)
    if k.crypt:  # the layers hold the LV: vgchange -an would refuse it
        for name in (f"{k.name}-crypt", k.crypt_name):
            run(["dmsetup", "remove", name], check=False)
    if k.base_method == "lvm":
        run(["vgchange", "-an", k.vg], check=False)
    for _ in range(4):  # snapshots before what they sit on: retry until none is left
        names = [n for n in dm_names() if k.kid in n]
        if not names:
            break
        for name in names:
            run(["dmsetup", "remove", name], check=False)
    for loop, backing in loops().items():
        if backing.startswith(k.keep + "/"):
            run(["losetup", "-d", loop], check=False)
    run(["umount", k.keep], check=False)


def loops() -> dict[str, str]:
    """Every attached loop device (``/dev/loopN``) and its backing file, from sysfs."""
    out = {}
    for loop in sorted(os.listdir("/sys/block")):
        try:
            with open(f"/sys/block/{loop}/loop/backing_file", encoding="utf-8") as f:
                out[f"/dev/{loop}"] = f.read().strip()
        except OSError:
            continue
    return out


def open_crypt(k: Kind) -> None:
    """Open the origin's crypt mapping over the base with the harness's key, as a boot's
    crypttab (cryptsetup plain mode, its uuid too) would. The table goes in on stdin: the
    key is on no command line and in no log."""
    with open(k.key_file, encoding="utf-8") as f:
        key = f.read().strip()
    size = run(["blockdev", "--getsz", k.base_dev]).out.strip()
    table = f"0 {size} crypt {CIPHER} {key} 0 {k.base_dev} 0\n"
    uuid = f"CRYPT-PLAIN-{k.crypt_name}"
    run(["dmsetup", "create", k.crypt_name, "--uuid", uuid], stdin=table)


def boot(k: Kind) -> list[subprocess.CompletedProcess[str]]:
    """What a user does after a reboot, before using the kind's origin; the recovers' results.
    Unstacked dm: ``snapkit recover`` (the prepared origin, and the snapshot). Stacked on lvm:
    open the crypt mapping over the LV (activated by ``attach``), then recover (it rebuilds
    ``NAME-crypt`` with the key read from that mapping). Stacked on dm: recover first (the
    prepared device the mapping sits on is snapkit's), open the mapping, recover again."""
    done = []
    if k.base_method != "lvm":
        done.append(snapkit(k, "recover", "--json", check_ok=False))
    if k.crypt:
        open_crypt(k)
        done.append(snapkit(k, "recover", "--json", check_ok=False))
    return done


def dm_names() -> list[str]:
    out = []
    for kname in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{kname}/dm/name", encoding="utf-8") as f:
                out.append(f.read().strip())
        except OSError:
            pass
    return out


def snapkit(k: Kind, *args: str, check_ok: bool = True) -> subprocess.CompletedProcess[str]:
    """``snapkit ARGS`` with the kind's state directory, in this process (:func:`in_process`)."""
    return in_process(k.state, *args, check_ok=check_ok)


def in_process(
    state: str, *args: str, check_ok: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``snapkit ARGS`` with ``state`` as its state directory (and ``env`` on top), run in
    this process: under TCG a snapkit start is ~1 s of imports, paid here once per boot instead
    of once per call. The operations under test are never run this way: they are separate
    processes, cut by QEMU's death (or the log's end) like any other."""
    from snapkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    extra = {"SNAPKIT_STATE_DIR": state, "DM_DISABLE_UDEV": "1", **(env or {})}
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    proc = subprocess.CompletedProcess(["snapkit", *args], code, out.getvalue(), err.getvalue())
    log(f"$ snapkit {' '.join(args)} -> {code} {proc.stderr.strip()[-300:]}")
    if check_ok and code != 0:
        raise RuntimeError(f"snapkit {' '.join(args)}: {proc.stderr.strip()[-800:]}")
    return proc


def durable(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def acked(ledger: str) -> int:
    try:
        with open(ledger, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip().isdigit())
    except FileNotFoundError:
        return 0


def read_int(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            return int(f.read().strip() or 0)
    except FileNotFoundError:
        return 0
