"""The btrfs method: subvolume snapshots, the merge's atomic exchange, and the recovery of a
merge a crash cut short."""
