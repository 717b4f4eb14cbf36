"""Code that runs inside the guest on Debian's python3: standard library only."""
