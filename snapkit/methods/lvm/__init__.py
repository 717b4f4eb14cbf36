"""The LVM methods: classic ``lvcreate -s`` snapshots and thin snapshots, and the recovery of
a verb a crash cut short."""

LVM_METHODS = ("lvm", "lvm-thin")  # the records whose LVs LVM keeps
