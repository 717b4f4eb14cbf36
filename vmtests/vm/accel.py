"""Choosing the accelerator: KVM only when it is proven to boot this kernel.

On some hosts /dev/kvm opens and KVM_CREATE_VM succeeds, yet a stock kernel under KVM spins
forever (a paravirtual nested KVM: seen on the project's own build machines, where a stock
Debian kernel under KVM printed nothing for minutes). So ``auto`` boots a real probe guest under
KVM and accepts KVM only if that guest runs a command within a few seconds; otherwise TCG. The
verdict is cached per host boot, QEMU binary and image, since the probe costs seconds.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path

from vmtests.vm.cache import cache_dir
from vmtests.vm.errors import VmError
from vmtests.vm.image import Image
from vmtests.vm.qemu import Accel

PROBE_TIMEOUT_S = 8.0
CHOICES = ("auto", "kvm", "tcg")


def _cache_key(image: Image) -> str:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{boot_id}:{image.key}"


def _kvm_usable_now(image: Image) -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    from vmtests.vm import execute

    with tempfile.TemporaryDirectory(prefix="vmtest-kvm-probe-") as tmp:
        try:
            result = execute.run_quietly(
                image,
                ["true"],
                Path(tmp),
                accel=Accel.KVM,
                memory_mib=256,
                timeout=PROBE_TIMEOUT_S,
                cold_boot=True,  # it probes the boot itself
            )
        except VmError:
            return False
    return result.returncode == 0


def choose(requested: str, image: Image) -> Accel:
    """Resolve ``auto``/``kvm``/``tcg`` (or $VMTEST_ACCEL when ``auto``) to an accelerator."""
    requested = os.environ.get("VMTEST_ACCEL", requested) if requested == "auto" else requested
    if requested not in CHOICES:
        raise ValueError(f"accelerator {requested!r}: choose one of {', '.join(CHOICES)}")
    if requested != "auto":
        return Accel(requested)
    cache = cache_dir() / "accel.json"
    key = _cache_key(image)
    cache.parent.mkdir(parents=True, exist_ok=True)
    # One probe per host boot: parallel test workers wait for the first one's verdict.
    with (cache.parent / ".accel.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}
        if key not in known:
            known = {key: str(Accel.KVM if _kvm_usable_now(image) else Accel.TCG)}
            tmp = cache.with_suffix(f".{os.getpid()}")
            tmp.write_text(json.dumps(known))
            tmp.replace(cache)
    return Accel(known[key])


__all__ = ["CHOICES", "PROBE_TIMEOUT_S", "choose"]
