"""The VM layer: the guest image, the per-boot payload, QEMU, and talking to a booted guest."""
