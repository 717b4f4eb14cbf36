"""`vmtest`: build the guest image, run commands in throwaway VMs, benchmark, run campaigns."""

from __future__ import annotations


def main() -> int:
    raise SystemExit("vmtest: not implemented yet")
