"""The ``zfs`` method: ZFS's own snapshots of a mounted dataset (``zfs snapshot``,
``zfs rollback``, ``zfs destroy``), and their recovery."""
