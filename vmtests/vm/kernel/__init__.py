"""Kernels for the guest: which one (spec), what is in its files, and its cached layer.

A guest image is one userland (``vmtests.vm.image``) plus one kernel layer. The layer holds
everything that depends on the kernel (the kernel file, its modules as a read-only disk, the
initramfs modules), so adding a kernel never rebuilds the userland. Modules, by job:

- ``spec``      ``debian:SUITE[/FLAVOUR]`` or a PATH, from ``--kernel``/``VMTEST_KERNEL``
- ``files``     bzImage header, payload, PVH note, release of a kernel file; module ELF data
- ``modules``   a modules tree: built-ins, vermagic, what the harness needs, insmod order
- ``debian``    the recipe's suite and mirror, and a kernel .deb fetched with a private apt
- ``usertree``  a user's own build: find its kernel and modules, refuse what does not fit
- ``layer``     build and cache a layer, keyed by a hash of what made it
"""
