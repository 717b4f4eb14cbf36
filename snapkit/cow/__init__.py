"""An offline model of dm-snapshot: its persistent COW format, its block-level behaviour and
fast tools over image files (inspect, export, merge, diff), exact to the kernel's bytes.

``format`` holds the records, ``store`` the persistent exception store, ``model`` an origin
with its snapshots, and ``image`` the streaming tools the CLI calls.
"""
