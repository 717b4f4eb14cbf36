"""snapkit: consistent snapshots of live Linux filesystems, and an offline model of dm-snapshot.

The Python API (:mod:`snapkit.api`) is here at the top level::

    import snapkit

    with snapkit.snapshot("/home", cow_size="2G") as snap:   # created here
        backup(snap.mount("/mnt/snap"))                       # a read-only view
    # unmounted and discarded here, even when the block raised

The package is importable with nothing but the standard library, because the same code runs on
the host and inside throwaway guests that have only Debian's python3. ``import snapkit`` stays
as cheap as it was: the API's module loads on the first use of one of its names (PEP 562), and
the machinery of a verb when the verb runs.
"""

import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# A library logs; it does not print. Without a handler, Python's last-resort handler would
# print every warning to stderr and break the CLI's one-line error contract. The CLI turns
# logging on with SNAPKIT_DEBUG=1.
logging.getLogger("snapkit").addHandler(logging.NullHandler())

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ loads them on first use
    from snapkit.api import (
        OperationError,
        Progress,
        RefusedError,
        Size,
        SnapkitError,
        Snapshot,
        SnapshotGroup,
        SnapshotStatus,
        State,
        UsageError,
        create,
        freeze,
        get,
        group,
        list_snapshots,
        prepare_device,
        recover_all,
        release_device,
        snapshot,
    )

# snapkit.api.__all__ and __version__: written out rather than imported, so that `import
# snapkit` does not load the API (tests/unit/test_api.py checks that the lists agree).
__all__ = [
    "OperationError",
    "Progress",
    "RefusedError",
    "Size",
    "SnapkitError",
    "Snapshot",
    "SnapshotGroup",
    "SnapshotStatus",
    "State",
    "UsageError",
    "__version__",
    "create",
    "freeze",
    "get",
    "group",
    "list_snapshots",
    "prepare_device",
    "recover_all",
    "release_device",
    "snapshot",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from snapkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'snapkit' has no attribute {name!r}")
