"""The one-time probe boot of a new layer: PVH if it runs a command, else the bzImage.

Pinned because a kernel differs here: bookworm-backports' 6.12.95 PVH ELF panics early (in
varying places) while its bzImage boots; bookworm's 6.1 and trixie's 6.12.118 boot via PVH."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmtests.vm import guest_image
from vmtests.vm.errors import KernelError
from vmtests.vm.image import Image
from vmtests.vm.kernel.layer import Layer


def _image(tmp_path: Path, *, elf: bool = True) -> Image:
    root = tmp_path / "kernel-0123"
    root.mkdir()
    (root / "vmlinuz").write_bytes(b"bz")
    if elf:
        (root / "vmlinux").write_bytes(b"elf")
    (root / "release").write_text("6.12.95+deb12-cloud-amd64\n")
    return Image(tmp_path / "userland", Layer(root))


def _boots(monkeypatch: pytest.MonkeyPatch, verdicts: dict[str, bool]) -> list[str]:
    tried: list[str] = []

    def boots(img: Image) -> tuple[bool, str]:
        tried.append(img.kernel.name)
        return verdicts[img.kernel.name], "Kernel panic - not syncing: Fatal exception"

    monkeypatch.setattr(guest_image, "_boots", boots)
    return tried


@pytest.mark.parametrize(
    ("pvh_boots", "tried", "kernel"),
    [(True, ["vmlinux"], "vmlinux"), (False, ["vmlinux", "vmlinuz"], "vmlinuz")],
    ids=["pvh-boots-keeps-it", "pvh-panic-falls-back-to-the-bzimage-for-good"],
)
def test_the_probe_keeps_pvh_if_it_boots_else_the_bzimage_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pvh_boots: bool, tried: list[str], kernel: str
) -> None:
    img = _image(tmp_path)
    booted = _boots(monkeypatch, {"vmlinux": pvh_boots, "vmlinuz": True})
    guest_image._probe(img, lambda _m: None)
    assert booted == tried and img.kernel.name == kernel
    assert img.layer.probed  # no probe at the next boot
    assert json.loads((img.layer.root / "boot.json").read_text()) == {"pvh": pvh_boots}


def test_a_kernel_that_boots_neither_way_is_refused_and_probed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = _image(tmp_path)
    _boots(monkeypatch, {"vmlinux": False, "vmlinuz": False})
    with pytest.raises(KernelError, match="does not boot here"):
        guest_image._probe(img, lambda _m: None)
    assert not img.layer.probed
