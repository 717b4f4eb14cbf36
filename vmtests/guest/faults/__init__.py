"""Guest side of the fault runs: arm and judge power cuts, bad inputs, signal timing."""
