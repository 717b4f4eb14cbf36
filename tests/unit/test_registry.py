"""The method registry imports only the method asked for (every import is ~25x dearer under
TCG in the guest), and its name -> module:Class map agrees with the classes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from snapkit.errors import UsageError
from snapkit.methods import registry

PROBE = """
import sys
import snapkit.cli.snapshot, snapkit.cli.recover, snapkit.flow, snapkit.recover
from snapkit.methods import registry
{body}
print(" ".join(sorted(m for m in sys.modules if m.startswith("snapkit.methods."))))
"""


def _loaded(body: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(body=body)], check=True, capture_output=True, text=True
    ).stdout
    return set(out.split())


def test_the_cli_and_flow_import_no_method() -> None:
    loaded = _loaded("")
    assert loaded <= {
        "snapkit.methods.base",
        "snapkit.methods.registry",
        "snapkit.methods.dm",
        "snapkit.methods.dm.shared",
        "snapkit.methods.dm.layer",
        "snapkit.methods.stack",  # two constants; its modules load only for a stack
    }, loaded


def test_asking_for_lvm_imports_lvm_only() -> None:
    loaded = _loaded("registry.factory('lvm')")
    assert "snapkit.methods.lvm.snapshot" in loaded
    assert not loaded & {
        "snapkit.methods.btrfs.snapshot",
        "snapkit.methods.freeze",
        "snapkit.methods.dm.direct",
        "snapkit.methods.auto",
    }, loaded


@pytest.mark.parametrize("name", registry.names())
def test_every_entry_names_its_class(name: str) -> None:
    assert registry.factory(name).name == name  # type: ignore[attr-defined]


def test_an_unknown_method_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="choose one of"):
        registry.factory("hammer2")
