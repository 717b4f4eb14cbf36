"""Measurements of snapkit: the COW model against a plain copy, the freeze window."""
