"""snapkit: consistent snapshots of live Linux filesystems, and an offline model of dm-snapshot.

The package is importable with nothing but the standard library, because the same code runs on
the host and inside throwaway guests that have only Debian's python3.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
