"""pytest plugin: registers options, markers and fixtures; heavy code is imported lazily."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: needs a QEMU guest (boots one or more VMs)")
