"""Rendering shared by every command: ``--json`` for machines, short text for people."""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(value: Any) -> None:
    """Print one JSON document on stdout, keys sorted so output diffs cleanly."""
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def print_fields(rows: list[tuple[str, object]]) -> None:
    """Print aligned ``key: value`` lines, the human form of a record."""
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        print(f"{key + ':':<{width + 1}} {value}")


__all__ = ["print_fields", "print_json"]
