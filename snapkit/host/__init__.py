"""The machine snapkit runs on: mounts and filesystems, freezing and its watchdog, loop
devices, LVM's tools, and resolving what the user named to a block device."""
