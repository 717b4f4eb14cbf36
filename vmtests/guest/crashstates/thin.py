"""lvm-thin crash states (opt-in: ``vmtest run --matrix crash-states --methods lvm-thin``).

The origin slice is the PV of ``vg<kid>`` as for lvm; in it a thin pool ``pool`` and the thin
origin LV ``lv0`` (the name every lvm kind's origin has). The snapshots are thin snapshots: no
COW of their own (``snapshot create`` takes no ``--cow-size``), their blocks are the pool's,
and the pool's metadata is what a power cut must leave consistent -- the boot's ``vgchange
-ay`` checks it (``thin_check``) before it activates the pool.

LVM creates thin snapshots with its activation-skip flag: a boot's ``vgchange -ay`` does not
activate them. So a kept thin snapshot is usable only if ``snapkit recover`` activates it
(``lvchange -ay -K``), which :func:`missing_nodes` checks: a snapshot listed active must have
its device node. Standard library and snapkit only.
"""

from __future__ import annotations

import os
from typing import Any

from vmtests.guest.crashstates.layout import Kind
from vmtests.guest.proc import run

THIN = "lvm-thin"
POOL_MIB, THIN_MIB = 200, 160  # in the 256 MiB origin slice; lv0 as large as lvm's


def make_lv0(k: Kind) -> None:
    """The thin pool and the thin origin ``lv0`` in ``k``'s VG (the PV and VG made before)."""
    run(["lvcreate", "-q", "-y", "--type", "thin-pool", "-L", f"{POOL_MIB}M", "-n", "pool", k.vg])
    run(["lvcreate", "-q", "-y", "-V", f"{THIN_MIB}M", "--thinpool", "pool", "-n", "lv0", k.vg])


def size_args(k: Kind, cow_size: str) -> list[str]:
    """``snapshot create``'s size option: none for a thin snapshot (snapkit refuses one)."""
    return [] if k.method == THIN else ["--cow-size", cow_size]


def missing_nodes(k: Kind, states: dict[str, str], shown: dict[str, Any]) -> list[str]:
    """The judge's problems for a thin kind: each snapshot recover kept (listed ``active``)
    whose device node is not there. Why a check of its own: without the node the snapshot
    can be neither checked nor mounted, and the fsck that follows would only say "no such
    file"; the cause is an activation that honoured LVM's skip flag."""
    if k.method != THIN:
        return []
    out = []
    for name, state in sorted(states.items()):
        dev = str(shown.get(name, {}).get("device", ""))
        if state == "active" and not (dev and os.path.exists(dev)):
            out.append(f"kept thin snapshot {name} without /dev/mapper node ({dev or 'none'})")
    if out:  # what LVM holds, into the guest's log: the replay line's reader needs it
        fields = "lv_name,lv_attr,origin,pool_lv,lv_active,transaction_id,lv_when_full"
        run(["lvs", "-a", "-o", fields, k.vg], check=False)
    return out


__all__ = ["POOL_MIB", "THIN", "THIN_MIB", "make_lv0", "missing_nodes", "size_args"]
