"""The loop ioctls' argument is the kernel's ``struct loop_config``, byte for byte.

Attaching needs root and /dev/loop-control, which CI does not give: that half is proven by the
crash-state VM runs (every state attaches three loops through it); here, the layout.
"""

from __future__ import annotations

import struct

from vmtests.guest import loopctl


def test_loop_config_is_the_kernels_304_bytes_with_each_field_where_the_kernel_reads_it() -> None:
    raw = loopctl.loop_config(7, "/dev/mapper/k1o", direct_io=True)
    assert len(raw) == 304  # 4 + 4 + sizeof(struct loop_info64) 232 + 8 * 8
    fd, block_size = struct.unpack_from("=2I", raw, 0)
    assert (fd, block_size) == (7, 0)  # block size 0: the kernel's default, as losetup's
    info = 8
    assert struct.unpack_from("=5Q", raw, info) == (0, 0, 0, 0, 0)  # no offset, no size limit
    (flags,) = struct.unpack_from("=I", raw, info + 40 + 12)
    assert flags == loopctl.LO_FLAGS_DIRECT_IO == 16
    name = raw[info + 56 : info + 56 + 64]
    assert name.rstrip(b"\0") == b"/dev/mapper/k1o"
    assert raw[info + 120 :] == bytes(304 - info - 120)  # crypt name, key, init, reserved


def test_without_direct_io_no_flag_is_set_and_a_long_name_keeps_its_terminating_nul() -> None:
    raw = loopctl.loop_config(3, "/" + "x" * 100, direct_io=False)
    assert struct.unpack_from("=I", raw, 8 + 52) == (0,)
    name = raw[8 + 56 : 8 + 56 + 64]
    assert name[:63] == b"/" + b"x" * 62 and name[63] == 0


def test_the_ioctl_numbers_are_linux_loop_h() -> None:
    assert (loopctl.LOOP_SET_FD, loopctl.LOOP_CLR_FD) == (0x4C00, 0x4C01)
    assert (loopctl.LOOP_CONFIGURE, loopctl.LOOP_CTL_GET_FREE) == (0x4C0A, 0x4C82)
    # _IOR(0x12, 114, size_t) on a 64-bit machine
    assert loopctl.BLKGETSIZE64 == (2 << 30) | (8 << 16) | (0x12 << 8) | 114
