"""Stacked origins: a filesystem on pass-through layers (dm-crypt, linear) over the device a
block-level method snapshots (an LV, a prepared device). See :mod:`snapkit.methods.stack.method`."""

STACK_KEY = "stack"  # the record detail that marks a stacked snapshot
BLOCK_METHODS = ("auto", "lvm", "lvm-thin", "dm", "dm-direct")

__all__ = ["BLOCK_METHODS", "STACK_KEY"]
