"""ZFS's module per kernel layer (vm/kernel/zfs.py), without building it: the throwaway
chroot's command line (headers and zfs-dkms in, only the modules out, contrib asked for), the
refusal of a user's kernel, the key, and the version read from the chroot's dpkg status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmtests.vm.errors import ImageError
from vmtests.vm.kernel import zfs
from vmtests.vm.kernel.layer import Layer

RELEASE = "6.1.0-57-cloud-amd64"


def layer(tmp_path: Path, spec: str) -> Layer:
    root = tmp_path / "kernel-abc"
    root.mkdir()
    (root / "release").write_text(RELEASE + "\n")
    (root / "manifest.json").write_text(json.dumps({"spec": spec}))
    return Layer(root)


def test_the_chroot_builds_for_the_layers_release_and_gives_out_only_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMTEST_DEBIAN_MIRROR", "http://m/debian")
    lay = layer(tmp_path, "debian:bookworm/cloud-amd64")
    headers = zfs.headers_package(lay)
    assert headers == f"linux-headers-{RELEASE}"
    argv = zfs.mmdebstrap_argv("bookworm", "bookworm", headers, RELEASE, tmp_path / "out", 0)
    assert "--format=null" in argv  # the chroot, compiler and all, is thrown away
    assert f"--include={headers},zfs-dkms" in argv
    assert f'--customize-hook=chroot "$1" dkms autoinstall -k {RELEASE}' in argv
    assert f"--customize-hook=copy-out /lib/modules/{RELEASE}/updates {tmp_path / 'out'}" in argv
    assert any(a.endswith("http://m/debian bookworm main contrib") for a in argv)
    other = zfs.mmdebstrap_argv("bookworm", "trixie", headers, RELEASE, tmp_path, 1000)
    assert "--mode=unshare" in other
    assert any(a.endswith("http://m/debian trixie main") for a in other)  # the kernel's suite


def test_a_users_kernel_is_refused_with_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="--kernel debian:SUITE"):
        zfs.headers_package(layer(tmp_path, "/home/me/linux/arch/x86/boot/bzImage"))


def test_the_key_follows_the_layer_and_the_suite(tmp_path: Path) -> None:
    lay = layer(tmp_path, "debian:bookworm/cloud-amd64")
    assert zfs.folder(lay, "bookworm").parent == lay.root  # cached with the kernel's layer
    assert zfs.key(lay, "bookworm") != zfs.key(lay, "trixie")
    assert zfs.key(lay, "bookworm") == zfs.key(Layer(lay.root), "bookworm")


def test_the_dkms_version_is_read_from_the_chroots_status() -> None:
    status = (
        "Package: dkms\nStatus: install ok installed\nVersion: 3.0.10-8\n\n"
        "Package: zfs-dkms\nStatus: install ok installed\nVersion: 2.1.11-1+deb12u1\n"
    )
    assert zfs.dkms_version(status) == "2.1.11-1+deb12u1"
    assert zfs.dkms_version("") == "?"
