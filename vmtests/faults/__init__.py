"""Power cuts and bad inputs: the cut matrix, its runner on a pool of VMs, its figures."""
