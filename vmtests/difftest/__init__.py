"""The differential test: histories run on the kernel in a guest and on snapkit's model."""
