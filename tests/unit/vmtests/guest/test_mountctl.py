"""mount(2) gets what mount(8) would hand the kernel; /proc/self/mounts is read as written.

The system calls themselves need root: the crash-state VM runs prove them (every state
mounts through them); here, the parts that decide what is passed and what is mounted.
"""

from __future__ import annotations

from pathlib import Path

from vmtests.guest import mountctl


def test_vfs_options_become_flags_and_the_rest_the_filesystems_data() -> None:
    assert mountctl.split_options("") == (0, "")
    assert mountctl.split_options("noauto_da_alloc") == (0, "noauto_da_alloc")
    assert mountctl.split_options("ro") == (1, "")
    assert mountctl.split_options("ro,nouuid") == (1, "nouuid")
    assert mountctl.split_options("ro,subvol=a/b,noatime") == (1 | 1024, "subvol=a/b")
    assert mountctl.split_options("rw,defaults") == (0, "")


def test_octal_escapes_of_proc_mounts_are_decoded() -> None:
    assert mountctl.unescape(r"/mnt/a\040b\011c\134d\012") == "/mnt/a b\tc\\d\n"
    assert mountctl.unescape(r"/plain") == "/plain"
    assert mountctl.unescape("\\04") == "\\04"  # too short to be an escape: kept as it is


def test_root_is_mounted_and_a_fresh_directory_is_not(tmp_path: Path) -> None:
    assert mountctl.mounted("/")
    assert not mountctl.mounted(str(tmp_path))


def test_umount_of_a_directory_with_nothing_mounted_does_nothing(tmp_path: Path) -> None:
    mountctl.umount(str(tmp_path))  # no system call, so no EINVAL (and no root needed)
