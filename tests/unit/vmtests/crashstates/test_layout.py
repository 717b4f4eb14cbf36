"""A judged state's teardown leaves no /dev/VG links behind, as a reboot's fresh /dev has none."""

from __future__ import annotations

import os
from pathlib import Path

from vmtests.guest.crashstates import layout


def test_the_vg_folder_goes_with_its_links(tmp_path: Path) -> None:
    vg = tmp_path / "vgk1"
    vg.mkdir()
    os.symlink("../dm-3", vg / "lv0")
    os.symlink("../dm-9", vg / "sk1")  # dangling, as after the LVs left the kernel
    layout._drop_vg_links(str(vg))
    assert not vg.exists()


def test_what_is_not_a_link_is_left_and_so_is_its_folder(tmp_path: Path) -> None:
    vg = tmp_path / "vgk1"
    vg.mkdir()
    os.symlink("../dm-3", vg / "lv0")
    (vg / "stray").write_text("not LVM's")
    layout._drop_vg_links(str(vg))
    assert sorted(p.name for p in vg.iterdir()) == ["stray"]


def test_a_vg_never_activated_has_no_folder_and_that_is_fine(tmp_path: Path) -> None:
    layout._drop_vg_links(str(tmp_path / "absent"))
