"""Guest side of the differential test: the dm executor."""
