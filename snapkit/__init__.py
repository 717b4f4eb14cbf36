"""snapkit: consistent snapshots of live Linux filesystems, and an offline model of dm-snapshot.

The package is importable with nothing but the standard library, because the same code runs on
the host and inside throwaway guests that have only Debian's python3.
"""

import logging

__version__ = "0.1.0"

# A library logs; it does not print. Without a handler, Python's last-resort handler would
# print every warning to stderr and break the CLI's one-line error contract. The CLI turns
# logging on with SNAPKIT_DEBUG=1.
logging.getLogger("snapkit").addHandler(logging.NullHandler())

__all__ = ["__version__"]
