"""The LVM methods: classic ``lvcreate -s`` snapshots and thin snapshots, and the recovery of
a verb a crash cut short."""

LVM_METHODS = ("lvm", "lvm-thin")  # the records whose LVs LVM keeps
# Thin snapshots carry LVM's activation-skip flag: neither lvcreate nor a boot's vgchange -ay
# activates them; only an activation that ignores the flag (-K) gives them a device node.
THIN_ACTIVATE = ("lvchange", "-ay", "-K")
