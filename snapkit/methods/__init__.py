"""Snapshot methods: one module per method, each turning a request into a Plan.

The shared vocabulary (requests, records, states and the ``Method`` protocol) lives in
``snapkit.methods.base``; ``registry`` maps a ``--method`` name to its implementation.
"""
