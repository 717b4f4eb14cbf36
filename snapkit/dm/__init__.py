"""Device-mapper, typed: tables and status lines as records, and the one kernel interface.

``table`` and ``status`` parse and format the kernel's text; ``ioctl`` packs the binary
interface; ``control`` is the only module that makes dm syscalls; ``fake`` stands in for the
kernel in tests.
"""
