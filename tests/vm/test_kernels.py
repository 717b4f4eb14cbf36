"""Other kernels end to end, through the real ``vmtest`` command: a second Debian suite's
kernel, and a user's build tree (laid out from that same Debian kernel, so CI fetches one
extra kernel at most: trixie's 6.12, about 80 s to fetch and layer the first time)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmtests.vm import guest_image
from vmtests.vm.image import Image

VMTEST = Path(sys.executable).with_name("vmtest")
EXTRA = "debian:trixie"  # the one extra kernel CI builds

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_image")]  # vm_image skips if unbuilt


def vmtest(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VMTEST), *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def trixie() -> Image:
    return guest_image.prepare(EXTRA, build_userland=False)


def _user_tree(layer: Image, at: Path) -> tuple[Path, Path]:
    """A Debian kernel laid out as a user's build: TREE/arch/x86/boot/bzImage and a
    'make modules_install INSTALL_MOD_PATH=MODS' tree."""
    tree, mods = at / "linux", at / "mods"
    (tree / "arch/x86/boot").mkdir(parents=True)
    shutil.copyfile(layer.layer.root / "vmlinuz", tree / "arch/x86/boot/bzImage")
    moddir = mods / "lib/modules" / layer.release
    moddir.parent.mkdir(parents=True)
    subprocess.run(
        ["unsquashfs", "-q", "-n", "-d", str(moddir), str(layer.modules_disk)],
        check=True,
        capture_output=True,
    )
    return tree, mods


def test_a_second_debian_kernel_boots_and_the_default_is_unchanged(trixie: Image) -> None:
    r = vmtest("exec", "--accel", "tcg", "--kernel", EXTRA, "--", "uname", "-r")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("6.12."), r.stdout
    assert "building userland" not in r.stderr  # a kernel never rebuilds the userland
    default = vmtest("exec", "--accel", "tcg", "--", "uname", "-r")
    assert default.stdout.startswith("6.1."), default.stdout


def test_a_user_build_tree_boots_with_its_modules(trixie: Image, tmp_path: Path) -> None:
    tree, mods = _user_tree(trixie, tmp_path)
    r = vmtest(
        "exec",
        "--accel",
        "tcg",
        "--kernel",
        str(tree),
        "--modules",
        str(mods),
        "--",
        "sh",
        "-c",
        "uname -r; modprobe dm_thin_pool && echo thin-ok",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [trixie.release, "thin-ok"]


def test_a_mismatched_modules_tree_is_refused_in_one_line(trixie: Image, tmp_path: Path) -> None:
    tree, mods = _user_tree(trixie, tmp_path)
    other = mods / "lib/modules/6.1.0-57-cloud-amd64"
    (mods / "lib/modules" / trixie.release).rename(other)
    r = vmtest("exec", "--kernel", str(tree), "--modules", str(mods), "--", "true", timeout=60)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1, r.stderr  # one line, before any boot
    assert f"holds modules for 6.1.0-57-cloud-amd64, not for {trixie.release}" in r.stderr
