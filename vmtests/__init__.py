"""vmtests: throwaway QEMU guests for testing snapkit against a real kernel.

The host side (this package) builds the guest image, boots and talks to VMs, and plugs into
pytest. ``vmtests.guest`` runs inside the VM on Debian's python3 and imports only the standard
library.
"""
