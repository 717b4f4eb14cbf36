"""The campaign's tests exist only when the campaign plugin is loaded (``vmtest run``, or
``pytest -p vmtests.campaign.plugin tests/campaign``): a plain ``pytest tests`` skips this
folder, so ``make test`` never runs the whole matrix."""

from pathlib import Path

import pytest


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if not config.pluginmanager.has_plugin("vmtests.campaign.plugin"):
        return True
    return None
