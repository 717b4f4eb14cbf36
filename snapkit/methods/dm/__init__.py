"""The raw device-mapper methods: ``dm`` (the LVM way: ``-real`` + ``snapshot-origin``),
``dm-direct`` (the origin itself becomes the ``snapshot``), what they share, the throwaway
mount layer, ``device prepare``, and their recovery after a crash."""

DM_METHODS = ("dm", "dm-direct")  # the records whose device is snapkit's own dm device
